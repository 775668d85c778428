"""URIs with passwords: hide them before anything is printed, logged or tagged.

Standard library only, so that the CLI modules can use it without loading MLflow or torch.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***`` (safe to print, log or tag)."""
    if not uri:
        return ""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str, uri: str | None) -> str:
    """``text`` with ``uri``'s password (and ``uri`` itself) replaced by their redacted forms."""
    if not uri:
        return text
    text = text.replace(uri, redact(uri))
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text
