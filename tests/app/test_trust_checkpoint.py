"""Checkpoints of a few kilobytes that would expand to gigabytes are refused, quickly, before the
expansion: compressed members, storages declared larger than their bytes, stride-0 tensors, one storage
behind many tensors, shared references, allocating callables in the pickle, deep or huge containers.
Every case runs with a 100 MB budget and must fail with one CheckpointError line naming the file."""

import collections
import io
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from ppl_vae import CheckpointError
from ppl_vae.app.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint, validate_state_dict

MB = 1024**2


@pytest.fixture(autouse=True)
def _budget(monkeypatch):
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "100M")


def _payload(**extra):
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ppl_vae_version": "0",
        "model_spec": {"latent_dim": 2},
        "state_dict": {"w": torch.ones(3, 2), "b": torch.zeros(3)},
    }
    payload.update(extra)
    return payload


def _refused(path, match, seconds=10.0):
    """load_checkpoint raises one line naming the file and matching ``match``, within ``seconds``."""
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert time.monotonic() - start < seconds
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# --- hand-made archives -------------------------------------------------------------------------------


class _Storage:
    def __init__(self, key, numel, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = str(key), numel, kind


class _Tensor:
    """Pickles as torch's own tensor record, pointing at a _Storage, with any size/stride/offset."""

    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Call:
    """Pickles as a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        if isinstance(obj, torch.Tensor):
            raise AssertionError("hand-made archives hold _Tensor records only")
        return None


def _archive(path, extra, records, *, compression=zipfile.ZIP_STORED, zero_records=None):
    """Write a torch.save-style zip of a checkpoint with ``extra`` entries (tensors as _Tensor records):
    ``records`` maps storage keys to bytes, ``zero_records`` to a number of zero bytes streamed through
    the compressor (nothing that large is ever in memory)."""
    payload = {**_payload(state_dict={}), **extra}
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(payload)
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
        for key, nbytes in (zero_records or {}).items():
            chunk = bytes(MB)
            with archive.open(f"archive/data/{key}", "w", force_zip64=True) as member:
                for _ in range(nbytes // MB):
                    member.write(chunk)
    return path


def _set_declared_size(path, name, size):
    """Hand-edit the zip: claim ``size`` bytes for member ``name`` in its local and central headers."""
    raw = bytearray(path.read_bytes())
    encoded = name.encode()
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", raw, central + 28)[0]
        if bytes(raw[central + 46 : central + 46 + name_len]) == encoded:
            struct.pack_into("<II", raw, central + 20, size, size)
            local = struct.unpack_from("<I", raw, central + 42)[0]
            struct.pack_into("<II", raw, local + 18, size, size)
            path.write_bytes(bytes(raw))
            return
        central = raw.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"{name} not found")


# --- (b) zero strides ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["state_dict", "training"])
def test_stride_zero_tensor_of_a_billion_elements_is_refused(tmp_path, where):
    huge = torch.zeros(1).expand(10**9)  # one float of storage, 4 GB once copied
    payload = _payload()
    if where == "state_dict":
        payload["state_dict"]["w"] = huge
    else:
        payload["training"] = {"losses": huge, "rng": {"torch": torch.zeros(8, dtype=torch.uint8)}}
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    assert path.stat().st_size < 10_000  # torch.save wrote the 4-byte storage only
    _refused(path, "strides")


def test_stride_zero_in_a_second_dimension_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(extra=torch.ones(1, 64).expand(10**6, 64)), path)
    _refused(path, "strides")


# --- (a) shared storages and shared references --------------------------------------------------------


def test_many_views_of_one_storage_are_refused(tmp_path):
    base = torch.zeros(256 * 1024)  # 1 MB on disk, 1000 tensors of 1 MB each
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(optimizer_state={"state": {i: base.view(-1) for i in range(1000)}}), path)
    assert path.stat().st_size < 2 * MB
    _refused(path, "shared by two tensors|share one storage")


def test_a_view_into_a_larger_storage_is_refused(tmp_path):
    base = torch.arange(100.0)
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(extra=base[10:20]), path)
    _refused(path, "offset|does not own its storage")
    torch.save(_payload(extra=base[:10]), path)
    _refused(path, "does not own its storage")


def test_two_small_tensors_on_one_storage_are_refused(tmp_path):
    base = torch.ones(4)
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(a=base, b=base.view(2, 2)), path)
    _refused(path, "shared by two tensors|share one storage")


def test_one_tensor_referenced_many_times_counts_every_reference(tmp_path):
    block = torch.zeros(1024)  # 4 kB, referenced 100 000 times: 400 MB
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(history=[block] * 100_000), path)
    assert path.stat().st_size < 2 * MB
    _refused(path, "more than the limit|more than 1000000 values")


def test_a_doubling_tree_of_shared_lists_is_refused_quickly(tmp_path):
    tree = [torch.zeros(2)]
    for _ in range(60):  # 2**60 leaves in a file of a few kB
        tree = [tree, tree]
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(history=tree), path)
    assert path.stat().st_size < 20_000
    _refused(path, "values|nested|limit", seconds=10)


# --- (c) declared sizes and zip bombs -----------------------------------------------------------------


def test_compressed_member_zip_bomb_is_refused(tmp_path):
    numel = 64 * MB  # 256 MB of float zeros, ~250 kB deflated
    path = _archive(
        tmp_path / "checkpoint.pt",
        {"state_dict": {"w": _Tensor(_Storage(0, numel), (numel,), (1,))}},
        {},
        compression=zipfile.ZIP_DEFLATED,
        zero_records={0: 4 * numel},
    )
    assert path.stat().st_size < MB
    _refused(path, "compressed")


def test_storage_declared_larger_than_its_bytes_is_refused(tmp_path):
    path = _archive(
        tmp_path / "checkpoint.pt", {"state_dict": {"w": _Tensor(_Storage(0, 2**38), (4,), (1,))}}, {0: bytes(16)}
    )
    _refused(path, "declares 1099511627776 bytes but holds 16")


def test_zip_member_declared_larger_than_the_file_is_refused(tmp_path):
    numel = 2**28  # 1 GiB claimed by both the pickle and the zip
    path = _archive(
        tmp_path / "checkpoint.pt", {"state_dict": {"w": _Tensor(_Storage(0, numel), (numel,), (1,))}}, {0: bytes(16)}
    )
    _set_declared_size(path, "archive/data/0", 4 * numel)
    _refused(path, "does not hold|more than the limit")


def test_storages_summing_over_the_budget_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "1M")
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(extra=torch.zeros(512 * 1024)), path)  # 2 MB of storage, honestly on disk
    _refused(path, "more than the limit")


# --- (d) the pickle itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [_Call(bytearray, 2**28), _Call(torch.FloatTensor, 2**26), _Call(torch.UntypedStorage, 2**28), _Call(set, ())],
)
def test_callables_torch_allows_but_ppl_vae_never_writes_are_refused(tmp_path, call):
    """torch's weights-only unpickler calls bytearray(n) and torch.FloatTensor(n): a 200-byte file
    asking for gigabytes. Only tensor rebuilds and OrderedDict pass the dry run."""
    path = _archive(tmp_path / "checkpoint.pt", {"extra": call}, {})
    assert path.stat().st_size < 5_000
    _refused(path, "refused: unsupported global")


def test_deep_nesting_is_refused(tmp_path):
    nested = []
    for _ in range(200):
        nested = [nested]
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(history=nested), path)
    _refused(path, "nested more than")


def test_a_huge_flat_list_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(history=[0] * 1_500_000), path)
    _refused(path, "more than 1000000 values|data.pkl")


def test_an_enormous_pickle_is_refused_before_unpickling(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(note="x" * (8 * MB)), path)  # data.pkl over a sixteenth of the 100 MB budget
    _refused(path, "data.pkl")


def test_non_plain_objects_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(extra=torch.Size([3, 4])), path)
    _refused(path, "refused")
    torch.save(_payload(extra=torch.zeros(3).to_sparse()), path)
    _refused(path, "refused")


def test_legacy_and_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_payload(), path, _use_new_zipfile_serialization=False)  # a bare pickle stream
    _refused(path, "damaged or truncated")


# --- memory actually stays small --------------------------------------------------------------------

PEAK = r"""
import resource, sys
from ppl_vae.app.checkpoint import load_checkpoint
from ppl_vae.errors import CheckpointError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    try:
        load_checkpoint(path)
        print("loaded", path)
    except CheckpointError:
        pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_refusing_bombs_allocates_little(tmp_path):
    numel = 32 * MB  # 128 MB of float zeros
    bombs = [
        _archive(
            tmp_path / "zip.pt",
            {"state_dict": {"w": _Tensor(_Storage(0, numel), (numel,), (1,))}},
            {},
            compression=zipfile.ZIP_DEFLATED,
            zero_records={0: 4 * numel},
        ),
        _archive(tmp_path / "bytearray.pt", {"extra": _Call(bytearray, 2**29)}, {}),
    ]
    out = subprocess.run(
        [sys.executable, "-c", PEAK, *map(str, bombs)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PPL_VAE_MAX_MEMORY": "100M"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert "loaded" not in lines
    assert int(lines[-1]) < 64  # MB of peak growth, against 640 MB unchecked


# --- legitimate checkpoints still load --------------------------------------------------------------


def test_shared_optimizer_state_and_views_written_by_save_checkpoint_load(tmp_path):
    """run.py passes one optimizer dict twice (optimizer_state and training["optimizer"]); save_checkpoint
    makes views, expanded and tied tensors own their storage, so its own files always pass."""
    optimizer = {"state": {0: {"exp_avg": torch.ones(3, 2), "step": torch.tensor(4.0)}}, "param_groups": []}
    big = torch.arange(12.0)
    tied = torch.ones(2, 2)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        path,
        model_spec={"a": 1},
        state_dict={"w": big[2:5], "tied.a": tied, "tied.b": tied},
        optimizer_state=optimizer,
        training={
            "optimizer": optimizer,
            "epoch": 1,
            "losses": torch.zeros(1).expand(5),
            "rng": {"torch": torch.get_rng_state()},
        },
    )
    payload = load_checkpoint(path)
    assert payload["optimizer_state"] is payload["training"]["optimizer"]
    assert torch.equal(payload["state_dict"]["w"], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(payload["state_dict"]["tied.b"], tied)
    assert torch.equal(payload["training"]["losses"], torch.zeros(5))
    assert path.stat().st_size < 50_000


# --- state dict against the architecture --------------------------------------------------------------


def test_validate_state_dict():
    expected = {"w": torch.zeros(3, 2), "b": (3,)}
    validate_state_dict({"w": torch.ones(3, 2), "b": torch.ones(3)}, expected, "c.pt")
    bad = [
        {"w": torch.ones(3, 2)},  # missing
        {"w": torch.ones(3, 2), "b": torch.ones(3), "x": torch.ones(1)},  # unexpected
        {"w": torch.ones(2, 3), "b": torch.ones(3)},  # shape
        {"w": torch.ones(3, 2), "b": [0.0, 0.0, 0.0]},  # not a tensor
        {"w": torch.ones(3, 2, dtype=torch.int64), "b": torch.ones(3)},  # dtype
        [("w", torch.ones(3, 2))],
    ]
    for state in bad:
        with pytest.raises(CheckpointError, match=r"checkpoint c\.pt does not fit the architecture"):
            validate_state_dict(state, expected, "c.pt")
