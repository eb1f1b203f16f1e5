"""An incremental server-sent-events decoder (the WHATWG `text/event-stream` rules a provider's
stream needs): bytes in as they arrive, whole events out.

Lines end at CRLF, LF or CR, also when the terminator is split across two chunks. A blank line
dispatches the event being built; an event the stream ends before its blank line is never
dispatched (it is a cut stream, not an event). `id:` and `retry:` are read and ignored: a
provider's stream is never resumed.
"""

from __future__ import annotations

import codecs
import re

from turnout.gateway.wire import AttemptFailed, Failure, SseEvent

#: The most characters one line, or one event's data, may hold: no provider's event is this large
#: (the largest real ones, a whole response in `response.completed`, are far below).
MAX_EVENT_CHARS = 8 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")


class SseParser:
    """Decodes one stream. feed() takes each received chunk; close() ends the stream."""

    def __init__(self, max_event_chars: int = MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the current line, not yet terminated
        # The last chunk ended at a CR: a LF starting the next one is its CR LF pair.
        self._after_cr = False
        self._at_start = True  # a byte-order mark is skipped here only
        self._event = ""
        self._data: list[str] = []
        self._data_chars = 0
        #: After close(): whether the stream ended in the middle of a line or an event.
        self.cut = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events this chunk completes. Raises AttemptFailed (transient) when a line or an
        event grows beyond the bound."""
        text = self._text.decode(chunk)
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = False
        events: list[SseEvent] = []
        start = 0
        for end in _LINE_END.finditer(text):
            line, self._line = self._line + text[start : end.start()], ""
            self._take(line, events)
            start = end.end()
        if text.endswith("\r"):
            self._after_cr = True
        if start < len(text):
            self._line += text[start:]
            if len(self._line) > self._max:
                raise _too_large(f"a line of more than {self._max} characters")
        return events

    def close(self) -> list[SseEvent]:
        """Ends the stream. Returns no event: a line or an event the stream left unfinished (no
        blank line after it) is discarded, as the standard says; `cut` tells if there was one."""
        self.cut = bool(self._line or self._data or self._event)
        self._line = ""
        self._reset_event()
        return []

    def _take(self, line: str, events: list[SseEvent]) -> None:
        if not line:
            if self._data:
                events.append(SseEvent(self._event, "\n".join(self._data)))
            self._reset_event()
            return
        if line[0] == ":":
            return  # a comment (keep-alives, OpenRouter's ": OPENROUTER PROCESSING")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_chars += len(value) + 1
            if self._data_chars > self._max:
                raise _too_large(f"an event of more than {self._max} characters of data")
            self._data.append(value)
        elif name == "event":
            self._event = value

    def _reset_event(self) -> None:
        self._event = ""
        self._data = []
        self._data_chars = 0


def _too_large(what: str) -> AttemptFailed:
    return AttemptFailed(Failure("transient", f"the provider's event stream sent {what}"))
