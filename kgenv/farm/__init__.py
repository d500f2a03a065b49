"""kgenv farm: plans of kernels × fixes run as cached jobs on a local or Buildbot engine."""
