"""The env side: a shipped kernel's build environment read, pinned and recorded (manifest + image)."""
