"""AGFT node agent: runs on every GPU node; never imports server/."""

__version__ = "0.1.0"
