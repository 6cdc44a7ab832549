"""`python -m batch` over what a SOURCE directory really holds: huge files, FIFOs, bad links.

The bounded reader is tested on real files: a sparse multi-GB file, a procfs file whose content
outruns its size, a character device and a FIFO. The listing is tested on a real tree, and
then the real job runs over it in a process of its own, its peak memory taken from the kernel
(wait4's rusage) when it ends.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import pytest
from batch_db import query
from conftest import DATA, ROOT
from test_batch import RUN_TIMEOUT_S, clean_env, local_args, stored, top_k_of

from batch.job import LEFT_OUT_EXAMPLES, left_out_summary
from batch.outcomes import Failure, Image, read_unless_stored
from batch.settings import MAX_IMAGE_BYTES, Shard, parse
from batch.sources import (
    DANGLING_LINK,
    LEFT_OUT_KINDS,
    LINK_LOOP,
    NOT_REGULAR,
    UNREADABLE,
    FileRefused,
    SourceError,
    Work,
    list_source,
    read_image,
)

T = TypeVar("T")

PHOTOS = ("coffee.jpg", "photos/chelsea.jpg")
HUGE_BYTES = 3 * 2**30  # sparse: it takes no disk, but reading it whole takes 3 GiB of memory
# The job's peak RSS over the two photos here is about 525 MiB (torch, the TorchScript model,
# one instance, small decodes); reading huge.jpg whole would add 3 GiB. 1 GiB leaves the
# normal peak room to vary by machine and library version and still catches a whole read.
MAX_PEAK_RSS_BYTES = 2**30
# A blocked open of a FIFO never returns by itself; this long, and it is taken as blocked.
BLOCKED_S = 10.0


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes (all zero) that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


def unless_blocked(fifo: Path, call: Callable[[], T]) -> T:
    """`call()`, failing the test if it blocks opening `fifo` (then the open is released, by
    opening the FIFO's other end, so the test ends instead of hanging)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.result(timeout=BLOCKED_S)
        except FutureTimeout:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a blocked reader wakes
            pytest.fail(f"blocked for {BLOCKED_S} s opening the FIFO {fifo}")


def assert_no_reader(fifo: Path) -> None:
    """Nothing holds `fifo` open for reading (a writer's non-blocking open says so)."""
    with pytest.raises(OSError) as raised:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert raised.value.errno == errno.ENXIO


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two photos, a sparse 3 GiB huge.jpg, a FIFO, a link loop, a dangling link, a link to a
    character device, and what is skipped without a word: a link to a directory, dot files."""
    root = tmp_path / "source"
    for key in PHOTOS:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / Path(key).name, root / key)
    sparse(root / "huge.jpg", HUGE_BYTES)
    os.mkfifo(root / "pipe.jpg")
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "photos" / "gone.jpg").symlink_to("deleted.jpg")
    (root / "null.jpg").symlink_to(os.devnull)
    (root / "photos-again").symlink_to("photos", target_is_directory=True)
    (root / ".cache").mkdir()
    os.mkfifo(root / ".cache" / "pipe")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


# ------------------------------------------------------------------------ the bounded reader


def test_reader_refuses_a_huge_file_before_reading_it(tmp_path: Path) -> None:
    huge = sparse(tmp_path / "huge.jpg", HUGE_BYTES)
    with pytest.raises(FileRefused, match=f"^{HUGE_BYTES} bytes exceeds --max_image_bytes 1000$"):
        read_image(huge, 1000)
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 1000)
    assert read_image(exact, 1000) == Image(b"x" * 1000, hashlib.sha256(b"x" * 1000).hexdigest())
    exact.write_bytes(b"x" * 1001)
    with pytest.raises(FileRefused, match=r"^1001 bytes exceeds --max_image_bytes 1000$"):
        read_image(exact, 1000)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux procfs")
def test_reader_refuses_a_file_that_grows_past_the_limit() -> None:
    """A procfs file is a regular file that fstat says is empty and that reads ~1 KiB: to the
    reader, exactly a file that grew between its fstat and its read. Growth within the limit
    is read on; past it, the file is refused after at most limit + 1 bytes."""
    status = Path("/proc/self/status")
    assert os.stat(status).st_size == 0
    grown = read_image(status, 1_000_000)
    assert grown.data.startswith(b"Name:") and len(grown.data) > 200
    with pytest.raises(FileRefused, match=r"^grew past --max_image_bytes 100 while read \(0 "):
        read_image(status, 100)


def test_reader_never_opens_a_fifo_or_a_device(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)

    def read_fifo() -> FileRefused:
        with pytest.raises(FileRefused) as raised:
            read_image(fifo, MAX_IMAGE_BYTES)
        return raised.value

    assert str(unless_blocked(fifo, read_fifo)) == "not a regular file: a FIFO"
    assert_no_reader(fifo)
    # /dev/zero would give limit + 1 bytes of zeros to a reader that only counted bytes.
    with pytest.raises(FileRefused, match=r"^not a regular file: a character device$"):
        read_image(Path("/dev/zero"), MAX_IMAGE_BYTES)


def test_refused_and_unreadable_files_become_failures(tmp_path: Path) -> None:
    """Both engines read through read_unless_stored: a refusal is the image's Failure."""
    huge = sparse(tmp_path / "huge.jpg", 5000)
    assert read_unless_stored(Work("huge.jpg", huge, None), 4096) == Failure(
        "huge.jpg", None, "5000 bytes exceeds --max_image_bytes 4096"
    )
    missing = read_unless_stored(Work("gone.jpg", tmp_path / "gone.jpg", None), 4096)
    assert isinstance(missing, Failure) and "No such file or directory" in missing.reason


def test_max_image_bytes_defaults_to_the_servers_request_limit(tmp_path: Path) -> None:
    from common.cli import DEFAULT_MAX_REQUEST_BYTES

    base = [str(tmp_path), "--model_dir", "repo"]
    assert parse(base, environ={}).max_image_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert parse([*base, "--max_image_bytes", "4096"], environ={}).max_image_bytes == 4096
    with pytest.raises(SystemExit):
        parse([*base, "--max_image_bytes", "0"], environ={})


# ------------------------------------------------------------------------ the listing


def test_listing_leaves_out_and_names_what_is_not_a_file(tree: Path) -> None:
    listing = unless_blocked(tree / "pipe.jpg", lambda: list_source(tree))
    assert sorted(listing.images) == sorted([*PHOTOS, "huge.jpg"])  # size is the reader's job
    kinds = {key: entry.kind for key, entry in listing.left_out.items()}
    assert kinds == {
        "loop-a": LINK_LOOP,
        "loop-b": LINK_LOOP,
        "null.jpg": NOT_REGULAR,
        "photos/gone.jpg": DANGLING_LINK,
        "pipe.jpg": NOT_REGULAR,
    }
    reasons = {key: entry.reason for key, entry in listing.left_out.items()}
    assert reasons["pipe.jpg"] == "not a regular file: a FIFO"
    assert reasons["null.jpg"] == "not a regular file: a character device"
    assert reasons["photos/gone.jpg"] == "a symbolic link to 'deleted.jpg', which does not exist"
    assert reasons["loop-a"].startswith("a symbolic link to 'loop-b': ")
    assert_no_reader(tree / "pipe.jpg")

    # Each left-out entry belongs to one shard, as an image does: N pods report it once.
    shards = [listing.shard(Shard(i, 3)) for i in range(3)]
    assert sorted(k for s in shards for k in s.left_out) == sorted(listing.left_out)
    assert sorted(k for s in shards for k in s.images) == sorted(listing.images)


def test_listing_leaves_out_a_directory_it_cannot_list(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tree / "locked"
    locked.mkdir()
    (locked / "a.jpg").write_bytes(b"x")
    if os.geteuid() == 0:
        # Root lists any directory, so the kernel's refusal is made here, at the one call.
        real_scandir = os.scandir

        def scandir(path: Any) -> Any:
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    locked.chmod(0)
    try:
        entry = list_source(tree).left_out["locked"]
    finally:
        locked.chmod(0o755)
    assert entry.kind == UNREADABLE and "Permission denied" in entry.reason


def source_error(source: Path) -> SourceError:
    """The SourceError that listing `source` raises."""
    with pytest.raises(SourceError) as raised:
        list_source(source)
    return raised.value


def test_list_file_naming_a_fifo_or_a_bad_link_stops_without_opening_it(tree: Path) -> None:
    listing = tree / "list.txt"
    for entry, what in (
        ("pipe.jpg", "a FIFO"),
        ("photos/gone.jpg", "which does not exist"),
        ("loop-a", "a symbolic link to 'loop-b'"),
    ):
        listing.write_text(f"coffee.jpg\n{entry}\n")
        message = str(unless_blocked(tree / "pipe.jpg", functools.partial(source_error, listing)))
        assert f"list.txt:2: {entry!r} is not a regular file" in message and what in message
    assert_no_reader(tree / "pipe.jpg")


def test_summary_counts_left_out_entries_by_kind(tree: Path) -> None:
    counts, examples = left_out_summary(list_source(tree).left_out.values())
    assert counts == {NOT_REGULAR: 2, DANGLING_LINK: 1, LINK_LOOP: 2, UNREADABLE: 0}
    assert list(counts) == list(LEFT_OUT_KINDS)
    assert examples == {
        LINK_LOOP: ["loop-a", "loop-b"],
        NOT_REGULAR: ["null.jpg", "pipe.jpg"],
        DANGLING_LINK: ["photos/gone.jpg"],
    }
    many, named = left_out_summary(
        list_source(tree).left_out[key] for key in ["pipe.jpg"] * (LEFT_OUT_EXAMPLES + 2)
    )
    assert many[NOT_REGULAR] == LEFT_OUT_EXAMPLES + 2
    assert len(named[NOT_REGULAR]) == LEFT_OUT_EXAMPLES


# ------------------------------------------------------------------------ the real job


def run_measured(args: list[str], logs: Path) -> tuple[int, dict[str, Any], str, int]:
    """Run `python -m batch ... --json` to its end, within RUN_TIMEOUT_S; returns (exit status,
    summary, stderr, peak RSS in bytes), the peak from the kernel's rusage of that process."""
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "batch", *args, "--json", "--progress", "plain"],
            cwd=ROOT,
            env=clean_env(),
            stdout=stdout,
            stderr=stderr,
        )
    ended: list[tuple[int, int, Any]] = []
    # Popen.wait reaps the process without its rusage; wait4 keeps it.
    waiter = threading.Thread(target=lambda: ended.append(os.wait4(job.pid, 0)), daemon=True)
    waiter.start()
    waiter.join(RUN_TIMEOUT_S)
    if not ended:
        job.kill()
        waiter.join(30)
        pytest.fail(f"python -m batch ran past {RUN_TIMEOUT_S} s: {err.read_text()[-2000:]}")
    _, status, usage = ended[0]
    job.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    lines = out.read_text().strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return job.returncode, summary, err.read_text(), usage.ru_maxrss * 1024  # KiB on Linux


def test_job_over_huge_file_fifo_and_bad_links(
    tree: Path, model_repository: Path, tmp_path: Path
) -> None:
    """The photos are predicted; huge.jpg is refused unread, in batch_errors; the FIFO, the
    links and the device are left out, recorded and counted; exit 1; memory stays bounded."""
    db = f"sqlite:///{tmp_path / 'predictions.db'}"
    # One model instance: the peak then does not grow with the machine's CPU count.
    args = local_args(tree, db, model_repository, "--instances", "1")
    status, summary, stderr, peak = run_measured(args, tmp_path)
    print(f"python -m batch peak RSS: {peak / 2**20:.0f} MiB")
    assert status == 1, stderr  # 1: some images failed or were left out
    assert peak < MAX_PEAK_RSS_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"
    left_out = {NOT_REGULAR: 2, DANGLING_LINK: 1, LINK_LOOP: 2, UNREADABLE: 0}
    assert (summary["images"], summary["predicted"], summary["failed"]) == (8, 2, 6)
    assert summary["left_out"] == left_out
    assert summary["left_out_examples"][DANGLING_LINK] == ["photos/gone.jpg"]

    rows = stored(db)
    assert sorted(rows) == sorted(PHOTOS)
    for key, (sha256, *_, top_k) in rows.items():
        assert sha256 == hashlib.sha256((tree / key).read_bytes()).hexdigest()
        assert len(top_k_of(top_k)) == 5
    errors = {
        key: (sha256, reason)
        for key, sha256, reason in query(db, "SELECT image_key, sha256, reason FROM batch_errors")
    }
    assert sorted(errors) == sorted(
        ["huge.jpg", "loop-a", "loop-b", "null.jpg", "photos/gone.jpg", "pipe.jpg"]
    )
    assert errors["huge.jpg"] == (
        None,
        f"{HUGE_BYTES} bytes exceeds --max_image_bytes {MAX_IMAGE_BYTES}",
    )
    assert errors["pipe.jpg"] == (None, "not a regular file: a FIFO")
    assert query(db, "SELECT images, predicted, skipped, failed FROM batch_runs") == [(8, 2, 0, 6)]
    assert_no_reader(tree / "pipe.jpg")
