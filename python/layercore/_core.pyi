"""Stubs for the Rust extension (checked against it by mypy.stubtest in `make test`)."""

from collections.abc import Callable, Iterable, Iterator
from os import PathLike
from typing import Literal, final

__all__ = [
    "CHUNK_SIZE",
    "Checksum",
    "Digester",
    "Entry",
    "EntryIterator",
    "HttpClient",
    "HttpReply",
    "StackView",
    "StackWalk",
    "TransferCounter",
    "__version__",
    "apply_layer",
    "build_layer_from_dir",
    "build_profile",
    "chain_id",
    "checksum_sources",
    "copy_blob",
    "describe_layer",
    "diff_dirs",
    "diff_stack_dir",
    "extract_layers",
    "flatten_layers",
    "open_entries",
    "overlay_upper_to_layer",
    "rustc_version",
    "sha256_file",
    "spawn_in_overlay",
    "squash_layers",
    "target",
    "verify_layer",
    "walk_tree",
]
__version__: str
build_profile: str
rustc_version: str
target: str
CHUNK_SIZE: int

def build_layer_from_dir(
    src: str,
    out: str,
    *,
    compression: str | None,
    level: int | None,
    source_date_epoch: int | None,
    owner: str,
    threads: int | None,
    chown: tuple[int, int] | None = None,
    under: str | None = None,
    under_dirs: list[tuple[int, int, int, int]] = ...,
    chmod: int | None = None,
) -> tuple[dict[str, object], list[str]]: ...
def describe_layer(path: str) -> dict[str, object]: ...
def verify_layer(
    path: str, digest: str | None = None, diff_id: str | None = None
) -> dict[str, object]: ...
def open_entries(path: str) -> EntryIterator: ...
def sha256_file(path: str | PathLike[str]) -> str: ...
def chain_id(diff_ids: list[str]) -> str: ...

# --- starting a container's command in its overlay (rust/py/sandbox.rs) ---

def spawn_in_overlay(
    argv: list[str],
    directory: str | PathLike[str],
    options: str,
    *,
    userns: bool,
    stdio: tuple[int, int, int],
    terminal: bool = False,
    env: list[tuple[str, str]] | None = None,
) -> int: ...

# --- build source checksums (rust/py/checksum.rs) ---

@final
class Checksum:
    @property
    def digest(self) -> str: ...
    @property
    def hashed(self) -> int: ...
    @property
    def cached(self) -> int: ...
    @property
    def hashed_bytes(self) -> int: ...
    def __len__(self) -> int: ...
    def records(self) -> list[dict[str, object]]: ...

def checksum_sources(
    sources: list[tuple[str, bytes, bool, Callable[[str, bool], bool] | None]],
    *,
    cache: str | None = None,
    workers: int | None = None,
) -> Checksum: ...
def walk_tree(root: str, skip: Callable[[str, bool], bool] | None = None) -> list[str]: ...

@final
class Entry:
    @property
    def path(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mode(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def uname(self) -> str: ...
    @property
    def gname(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> int: ...
    @property
    def linkname(self) -> str | None: ...
    @property
    def devmajor(self) -> int: ...
    @property
    def devminor(self) -> int: ...
    @property
    def xattrs(self) -> dict[str, bytes]: ...
    @property
    def offset(self) -> int: ...
    @property
    def layer(self) -> int | None: ...

@final
class EntryIterator:
    def __iter__(self) -> Iterator[Entry]: ...
    def __next__(self) -> Entry: ...

@final
class Digester:
    def __new__(cls, data: bytes | bytearray | memoryview | None = None) -> Digester: ...
    def update(self, data: bytes | bytearray | memoryview) -> None: ...
    def digest(self) -> str: ...
    def hexdigest(self) -> str: ...
    @property
    def size(self) -> int: ...
    def copy(self) -> Digester: ...

# --- stack: merged view (rust/py/stack.rs) ---

@final
class StackView:
    def __new__(
        cls, blobs: list[str], *, save_index: bool = False, index_dir: str | None = None
    ) -> StackView: ...
    def descriptors(self) -> list[dict[str, object]]: ...
    @property
    def diff_ids(self) -> list[str]: ...
    @property
    def chain_id(self) -> str: ...
    def __len__(self) -> int: ...
    def lookup(self, path: str | bytes | PathLike[str]) -> Entry | None: ...
    def lookup_many(self, paths: Iterable[str | bytes | PathLike[str]]) -> list[Entry | None]: ...
    def listdir(self, path: str | bytes | PathLike[str] | None = None) -> list[str]: ...
    def walk(self) -> StackWalk: ...
    def read(self, path: str | bytes | PathLike[str]) -> bytes: ...
    def read_into(self, path: str | bytes | PathLike[str], dest: str) -> int: ...
    def history(
        self, path: str | bytes | PathLike[str]
    ) -> list[tuple[int, Literal["added", "modified", "deleted", "hidden"]]]: ...
    def save_indexes(self) -> list[str]: ...

@final
class StackWalk:
    def __iter__(self) -> Iterator[Entry]: ...
    def __next__(self) -> Entry: ...
    def __length_hint__(self) -> int: ...

# --- flatten and squash (rust/py/flatten.rs) ---

def flatten_layers(
    paths: list[str],
    out: str,
    *,
    compression: str | None,
    level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
) -> dict[str, object]: ...
def squash_layers(
    paths: list[str],
    start: int,
    end: int,
    out: str,
    *,
    compression: str | None,
    level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
) -> dict[str, object]: ...

# --- apply / extract (rust/py/apply.rs) ---

def apply_layer(blob: str, dest: str, *, devices: str = "skip") -> dict[str, object]: ...
def extract_layers(
    blobs: list[str], dest: str, *, devices: str = "skip", overlay: str | None = None
) -> dict[str, object]: ...

# --- diff (rust/py/diff.rs) ---

def diff_dirs(
    lower: str,
    upper: str,
    out: str,
    *,
    compression: str | None,
    level: int | None,
    threads: int | None,
    owner: str,
    source_date_epoch: int | None,
    compare: str,
) -> tuple[dict[str, object], list[str]]: ...
def diff_stack_dir(
    stack: StackView,
    upper: str,
    out: str,
    *,
    compression: str | None,
    level: int | None,
    threads: int | None,
    owner: str,
    source_date_epoch: int | None,
    compare: str,
) -> tuple[dict[str, object], list[str]]: ...
def overlay_upper_to_layer(
    upper: str,
    out: str,
    *,
    compression: str | None,
    level: int | None,
    threads: int | None,
    owner: str,
    source_date_epoch: int | None,
    lower: StackView | None = None,
) -> tuple[dict[str, object], list[str]]: ...

# --- blob copy (rust/py/blob_copy.rs) ---

def copy_blob(
    src: str | PathLike[str],
    dest: str | PathLike[str],
    *,
    offset: int = 0,
    length: int | None = None,
    expected_digest: str | None = None,
    verify: bool = True,
    sync: bool = True,
) -> tuple[str | None, int]: ...

# --- registry HTTP (rust/py/http.rs) ---

@final
class TransferCounter:
    def __new__(cls) -> TransferCounter: ...
    @property
    def value(self) -> int: ...

@final
class HttpReply:
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[str, str]]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def url(self) -> str: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def resumed_from(self) -> int: ...
    def header(self, name: str) -> str | None: ...

@final
class HttpClient:
    def __new__(
        cls,
        *,
        insecure: bool = False,
        ca_pem: list[bytes] = ...,
        user_agent: str | None = None,
        connect_timeout: float = 30.0,
        io_timeout: float = 60.0,
        request_timeout: float = 120.0,
        min_rate: int = 1024,
    ) -> HttpClient: ...
    def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]] = ...,
        body: bytes | None = None,
        *,
        max_body: int = ...,
    ) -> HttpReply: ...
    def download(
        self,
        url: str,
        headers: list[tuple[str, str]],
        dest: str | PathLike[str],
        *,
        expected_digest: str | None = None,
        max_size: int | None = None,
        counter: TransferCounter | None = None,
    ) -> HttpReply: ...
    def upload(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        src: str | PathLike[str],
        offset: int,
        length: int,
        *,
        counter: TransferCounter | None = None,
    ) -> HttpReply: ...
