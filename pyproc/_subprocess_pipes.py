"""The parent's ends of a pyproc.subprocess.Popen's pipes: their lazy state, the lock it changes under, and the
file objects (binary or text) the standard library would hold there, made when first asked for.
"""

from __future__ import annotations

import io
import os
import threading
from typing import IO, Any, cast, overload


class _PipeState:
    """Marks a pipe whose file object Popen has not made yet (see Popen._stdin_f)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_LAZY = _PipeState("<open pipe, no file object yet>")
_LAZY_CLOSED = _PipeState("<closed pipe, no file object yet>")


class _Deleted:
    """The state of a pipe attribute the caller deleted (`del p.stdin`, unittest.mock.patch.object's exit): as with
    the standard library's plain attribute, reading it -- and anything Popen does with it -- raises the
    AttributeError of a missing attribute."""

    __slots__ = ("_error",)

    def __init__(self, popen: object, name: str) -> None:
        self._error = (f"'{type(popen).__name__}' object has no attribute '{name}'", name, popen)

    def missing(self) -> AttributeError:
        message, name, popen = self._error
        return AttributeError(message, name=name, obj=popen)

    def __getattr__(self, attr: str) -> Any:
        raise self.missing()

    def __bool__(self) -> bool:
        raise self.missing()
# Every change of a pipe from _LAZY (made into its file object, or closed / handed to the pump by this Popen) is
# made under this lock, so that a thread asking for .stdout never gets a file object whose fd another thread
# closes at the same time.  Read it as _subprocess_pipes._pipes_lock (the fork handler rebinds the name).
_pipes_lock = threading.Lock()


def _new_pipes_lock() -> None:
    global _pipes_lock
    _pipes_lock = threading.Lock()  # a forked child must not inherit it held by a thread that is not there


os.register_at_fork(after_in_child=_new_pipes_lock)


def _pipe_file(fd: int, mode: str, closed: bool, codec: tuple[str, str] | None) -> IO[Any]:
    """The file object the standard library makes for a pipe's parent end (fd): open(fd, mode, -1), in a
    TextIOWrapper in text mode (codec: its encoding and errors; stdin's writes through).  closed: fd was closed
    already (by communicate() or the with block): a closed file object with fd as its name (a rare path)."""
    raw_fd = fd
    if closed:
        raw_fd = os.open(os.devnull, (os.O_WRONLY if mode == "wb" else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        f: IO[Any] = open(raw_fd, mode, -1)  # noqa: SIM115
    except BaseException:
        if closed:
            os.close(raw_fd)
        raise
    if closed:
        f.raw.name = fd  # type: ignore[attr-defined]  # FileIO keeps its name in its __dict__: what repr shows
    if codec is not None:
        if mode == "wb":
            f = io.TextIOWrapper(cast(IO[bytes], f), write_through=True, line_buffering=False, encoding=codec[0],
                                 errors=codec[1])
        else:
            f = io.TextIOWrapper(cast(IO[bytes], f), encoding=codec[0], errors=codec[1])
    if closed:
        f.close()
    return f


class _Unseekable(io.BytesIO):
    """A pipe's stand-in for _text_codec's probe: not seekable."""

    def seekable(self) -> bool:
        return False


_text_codecs: dict[tuple[str, str | None], tuple[str, str]] = {}


def _text_codec(encoding: Any, errors: Any) -> tuple[str, str]:
    """(encoding, errors) of the TextIOWrapper(pipe, encoding=encoding, errors=errors) the standard library
    makes for a pipe in text mode; raises what that constructor raises (LookupError for an unknown encoding, ...).

    A probe wrapper over an unseekable in-memory buffer answers (its checks are the constructor's own); what it
    accepted is kept, so the check runs once per (encoding, errors).
    """
    key = (encoding, errors) if type(encoding) is str and (errors is None or type(errors) is str) else None
    if key is not None:
        known = _text_codecs.get(key)
        if known is not None:
            return known
    probe = io.TextIOWrapper(_Unseekable(), encoding=encoding, errors=errors)
    codec = (probe.encoding, cast(str, probe.errors))
    probe.detach()
    if key is not None:
        if len(_text_codecs) >= 64:
            _text_codecs.clear()
        _text_codecs[key] = codec
    return codec


class _PipeAttribute:
    """Popen.stdin / .stdout / .stderr: the pipe's file object, made on first access under the pipes lock.

    The Popen keeps the pipe in `_<stream>_f` (a file object, None, _LAZY or _LAZY_CLOSED), its fd in
    `_<stream>_fd` and the text codec in `_text_codec`.  Setting the attribute over a pipe that has no file object
    yet makes that object first, so that it is closed as the standard library's would be when dropped.
    """

    def __init__(self, stream: str, mode: str, doc: str) -> None:
        self._file_attr = f"_{stream}_f"
        self._fd_attr = f"_{stream}_fd"
        self._mode = mode
        self.__doc__ = doc

    @overload
    def __get__(self, popen: None, owner: Any = None) -> _PipeAttribute: ...
    @overload
    def __get__(self, popen: object, owner: Any = None) -> IO[Any] | None: ...

    def __get__(self, popen: Any, owner: Any = None) -> _PipeAttribute | IO[Any] | None:
        if popen is None:
            return self
        f = getattr(popen, self._file_attr)
        if f is _LAZY or f is _LAZY_CLOSED:
            with _pipes_lock:
                f = getattr(popen, self._file_attr)
                if f is _LAZY or f is _LAZY_CLOSED:
                    f = _pipe_file(getattr(popen, self._fd_attr), self._mode, f is _LAZY_CLOSED,
                                   popen._text_codec)
                    setattr(popen, self._file_attr, f)
        elif type(f) is _Deleted:
            raise f.missing()
        return cast("IO[Any] | None", f)

    def __set__(self, popen: object, value: IO[Any] | None) -> None:
        if getattr(popen, self._file_attr) is _LAZY:
            self.__get__(popen)  # the pipe's file object: dropped, it is closed as the stdlib's would be
        setattr(popen, self._file_attr, value)

    def __delete__(self, popen: object) -> None:
        f = getattr(popen, self._file_attr)
        if type(f) is _Deleted:
            raise f.missing()
        if f is _LAZY:
            self.__get__(popen)  # as __set__: the dropped file object is closed as the stdlib's would be
        setattr(popen, self._file_attr, _Deleted(popen, self._file_attr[1:-2]))
        popen._pipe_deleted = True  # type: ignore[attr-defined]

