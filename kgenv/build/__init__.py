"""The build stage: apply a fix, find what it changed, compile and package it."""
