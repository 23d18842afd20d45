"""Defines no entry point."""

VALUE = 1
