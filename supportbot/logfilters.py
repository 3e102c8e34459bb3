"""Logging filters installed by settings.LOGGING."""

from __future__ import annotations

import logging


class ClientErrorsWithoutTraceback(logging.Filter):
    """Requests that are the client's mistake, logged as one WARNING line.

    Two libraries log them as if the server had failed, with ERROR and a traceback:
    Django for every SuspiciousOperation (a Host not in ALLOWED_HOSTS, a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE; the client gets a 400), and uvicorn for a websocket
    text frame that is not UTF-8 (the client gets close code 1007). Any visitor, or
    any scanner on the internet, could fill the logs with those and bury real
    failures; a line saying what was refused is enough.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if self._from_client(record):
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, UnicodeDecodeError):
                record.msg = f"{record.getMessage()} ({exc.reason} at byte {exc.start})"
                record.args = ()
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno = logging.WARNING
                record.levelname = logging.getLevelName(logging.WARNING)
        return True

    @staticmethod
    def _from_client(record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return (
            record.name == "uvicorn.error"
            and isinstance(exc, UnicodeDecodeError)
            and "from client" in record.getMessage()
        )
