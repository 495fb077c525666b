"""An adversarial sweep over the classes of bad input of issue 12: flags, config files, damaged run
folders, hostile data files, dangerous outputs and every command.

The contract for every case: exit 0 with a result, or exit 2 with exactly one line on standard error;
never a traceback; nothing outside the case's own output changed (the run folder, the data files and
the user's files are hashed before and after). A small memory budget (``PPL_VAE_MAX_MEMORY=256M``) makes
every size check bite long before the machine would notice.
"""

import hashlib
import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae.app import folders
from ppl_vae.cli import build_parser, main
from ppl_vae.limits import format_bytes, parse_size

TINY = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "8", "--quiet"]
BUDGET = "256M"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained image run and a trained table run, made once; every case works on copies."""
    root = tmp_path_factory.mktemp("sweep-base")
    assert main(["train", *TINY, "--out", str(root / "run")]) == 0
    rng = np.random.default_rng(0)
    np.savetxt(root / "table.csv", rng.normal(size=(120, 3)), delimiter=",", header="a,b,c", comments="")
    assert (
        main(
            [
                "train",
                *TINY,
                "--dataset",
                f"table:{root / 'table.csv'}",
                "--likelihood",
                "gaussian",
                "--out",
                str(root / "table-run"),
            ]
        )
        == 0
    )
    return root


@pytest.fixture
def sandbox(base, tmp_path, monkeypatch):
    shutil.copytree(base / "run", tmp_path / "run")
    shutil.copytree(base / "table-run", tmp_path / "table-run")
    shutil.copy(base / "table.csv", tmp_path / "table.csv")
    table_config = json.loads((tmp_path / "table-run" / "config.json").read_text())
    table_config["dataset"] = f"table:{tmp_path / 'table.csv'}"
    (tmp_path / "table-run" / "config.json").write_text(json.dumps(table_config))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own work")
    (tmp_path / "out").mkdir()  # the only place a case may write (besides its run's files)
    # A case asks for the home directory as output: make it a sandbox, so that a regression (or running
    # this sweep against an old version, as was done once) can never delete the real one.
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("a user's home")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", BUDGET)
    return tmp_path


# -- hostile files, written in their real formats -----------------------------------------------------------


def _npy_header_only(shape, dtype="<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _write_npz_members(path: Path, members: dict, compress=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _png(path: Path, array: np.ndarray, mode: str | None = None, palette=None) -> None:
    from PIL import Image

    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def _images_folder(root: Path, make) -> Path:
    folder = root / "out" / "images"
    folder.mkdir(parents=True)
    for i in range(12):
        make(folder / f"{i}.png", i)
    return folder


# -- the cases ------------------------------------------------------------------------------------------------

CASES: dict[str, object] = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


# A. flags of train: every sized or numeric flag with values that are out of range, not numbers or absurd.
for _flag in (
    "--latent-dim",
    "--hidden-dims",
    "--particles",
    "--epochs",
    "--batch-size",
    "--image-size",
    "--seed",
    "--checkpoint-every",
    "--threads",
):
    for _value in ("0", "-1", "1000000000", "abc", "99999999999999999999", "1.5"):
        if _flag == "--seed" and _value == "0":
            continue
        CASES[f"train {_flag} {_value}"] = (
            lambda f, v: lambda root: ["train", *TINY, f"{f}={v}", "--out", str(root / "out" / "r")]
        )(_flag, _value)
for _flag in ("--lr", "--beta", "--max-memory"):
    for _value in ("nan", "inf", "-1", "x"):
        CASES[f"train {_flag} {_value}"] = (
            lambda f, v: lambda root: ["train", *TINY, f"{f}={v}", "--out", str(root / "out" / "r")]
        )(_flag, _value)
for _name, _argv in {
    "train unknown prior": ["--prior", "cauchy"],
    "train unknown likelihood": ["--likelihood", "x"],
    "train unknown guide": ["--guide", "x"],
    "train unknown objective": ["--elbo", "x"],
    "train bad schedule": ["--kl-schedule", "warmup:-3"],
    "train bad device": ["--device", "tpu:0"],
    "train cuda without cuda": ["--device", "cuda"],
    "train unknown dataset": ["--dataset", "imagenet"],
    "train nul in path": ["--dataset", "npz:/tmp/a\x00b"],
    "train mnist without files": ["--dataset", "mnist"],
    "train meanfield with vamp": ["--prior", "vamp", "--elbo", "meanfield"],
    "train bernoulli on a table": ["--dataset", "table:TABLE"],
    "train network over the budget": ["--hidden-dims", "40000", "40000"],
    "train image size over the budget": ["--image-size", "2000"],
}.items():
    CASES[_name] = (
        lambda a: (
            lambda root: [
                "train",
                *TINY,
                *[x.replace("TABLE", str(root / "table.csv")) for x in a],
                "--out",
                str(root / "out" / "r"),
            ]
        )
    )(_argv)


# B. config files
@case("config: binary file")
def _(root):
    (root / "out" / "c.json").write_bytes(torch.randn(100).numpy().tobytes())
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: 2 MB file")
def _(root):
    (root / "out" / "c.json").write_text(json.dumps({"dataset": "digits", "pad": "x" * 2_000_000}))
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: deep nesting")
def _(root):
    (root / "out" / "c.json").write_text("[" * 50000 + "]" * 50000)
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: unknown key")
def _(root):
    (root / "out" / "c.json").write_text(json.dumps({"latent_dims": 3}))
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: wrong types")
def _(root):
    (root / "out" / "c.json").write_text(json.dumps({"epochs": "1", "hidden_dims": 8}))
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: TOML syntax error")
def _(root):
    (root / "out" / "c.toml").write_text("epochs = = 3\n")
    return ["train", "--config", str(root / "out" / "c.toml"), "--out", str(root / "out" / "r")]


@case("config: a folder")
def _(root):
    return ["train", "--config", str(root / "mine"), "--out", str(root / "out" / "r")]


@case("config: JSON with a byte-order mark (valid)")
def _(root):
    (root / "out" / "c.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"epochs": 1, "latent_dim": 2, "hidden_dims": [8]}).encode()
    )
    return ["train", "--quiet", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


@case("config: huge integer")
def _(root):
    (root / "out" / "c.json").write_text('{"epochs": ' + "9" * 5000 + "}")
    return ["train", "--config", str(root / "out" / "c.json"), "--out", str(root / "out" / "r")]


# C. damaged run folders
def _damage(path_in_run: str, content):
    def make(root):
        target = root / "run" / path_in_run
        if content is None:
            target.unlink()
        else:
            before = target.read_bytes()
            after = content if isinstance(content, bytes) else content(before)
            assert after != before, f"the case does not change {path_in_run}: its damage no longer matches the file"
            target.write_bytes(after)
        return ["evaluate", str(root / "run"), "-k", "4", "--quiet"]

    return make


def _edit_config(**fields):
    """A damage of config.json that sets ``fields`` whatever the file's layout (it is pretty-printed)."""

    def edit(raw: bytes) -> bytes:
        config = json.loads(raw)
        config.update(fields)
        return json.dumps(config, indent=2).encode()

    return edit


CASES["run: no checkpoint"] = _damage("checkpoint.pt", None)
CASES["run: truncated checkpoint"] = _damage("checkpoint.pt", lambda b: b[: len(b) // 2])
CASES["run: random checkpoint"] = _damage("checkpoint.pt", os.urandom(5000))
CASES["run: checkpoint is JSON"] = _damage("checkpoint.pt", b"{}")
CASES["run: config missing"] = _damage("config.json", None)
CASES["run: config not JSON"] = _damage("config.json", b"\x00\x01garbage")
CASES["run: config is a list"] = _damage("config.json", b"[1, 2]")
CASES["run: config with NaN"] = _damage("config.json", lambda b: b.replace(b'"lr": 0.001', b'"lr": NaN'))
CASES["run: config latent_dim changed"] = _damage(
    "config.json", lambda b: b.replace(b'"latent_dim": 2', b'"latent_dim": 3')
)
CASES["run: config hidden_dims huge"] = _damage("config.json", _edit_config(hidden_dims=[100_000_000]))


@case("run: checkpoint with a zero-stride billion-element tensor")
def _(root):
    payload = torch.load(root / "run" / "checkpoint.pt", weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.zeros(1).expand(10**9)
    torch.save(payload, root / "run" / "checkpoint.pt")
    return ["evaluate", str(root / "run"), "-k", "4", "--quiet"]


@case("run: the folder is a file")
def _(root):
    return ["evaluate", str(root / "mine" / "notes.txt"), "-k", "4"]


@case("run: an empty folder")
def _(root):
    (root / "out" / "empty").mkdir()
    return ["evaluate", str(root / "out" / "empty"), "-k", "4"]


@case("run: table scaling damaged")
def _(root):
    (root / "table-run" / "scaling.json").write_text('{"mean": "x"}')
    return ["evaluate", str(root / "table-run"), "-k", "4", "--quiet"]


@case("run: resume a finished run with fewer epochs")
def _(root):
    return ["train", "--resume", str(root / "run"), "--epochs", "1"]


@case("run: resume with other flags")
def _(root):
    return ["train", "--resume", str(root / "run"), "--lr", "0.1"]


# D. hostile data files
def _train_on(spec_of):
    def make(root):
        return ["train", *TINY, "--dataset", spec_of(root), "--out", str(root / "out" / "r")]

    return make


@case("data: npz member declaring 10^13 float64 (64-byte header)")
def _(root):
    _write_npz_members(
        root / "out" / "d.npz",
        {"x_train.npy": _npy_header_only((10**7, 10**6)), "x_test.npy": _npy_header_only((10, 10))},
    )
    return _train_on(lambda r: f"npz:{r / 'out' / 'd.npz'}")(root)


@case("data: npz zip bomb")
def _(root):
    _write_npz_members(
        root / "out" / "d.npz",
        {
            "x_train.npy": _npy(np.zeros((4096, 8, 8, 1024), np.uint8)),
            "x_test.npy": _npy(np.zeros((10, 8, 8), np.uint8)),
        },
        compress=zipfile.ZIP_DEFLATED,
    )
    return _train_on(lambda r: f"npz:{r / 'out' / 'd.npz'}")(root)


for _label, _array in {
    "object": np.array([[1, "a"]] * 10, dtype=object),
    "complex": np.ones((20, 8, 8), np.complex64),
    "strings": np.array([["ab"] * 8] * 20),
    "empty": np.zeros((0, 8, 8), np.uint8),
    "NaN": np.full((20, 8, 8), np.nan, np.float32),
    "one dimension": np.zeros(64, np.uint8),
    "five dimensions": np.zeros((2, 2, 2, 2, 2), np.uint8),
}.items():
    CASES[f"data: npz of {_label}"] = (
        lambda a: (
            lambda root: (
                _write_npz_members(root / "out" / "d.npz", {"x_train.npy": _npy(a), "x_test.npy": _npy(a)}),
                _train_on(lambda r: f"npz:{r / 'out' / 'd.npz'}")(root),
            )[1]
        )
    )(_array)


@case("data: npz that is not a zip")
def _(root):
    (root / "out" / "d.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))
    return _train_on(lambda r: f"npz:{r / 'out' / 'd.npz'}")(root)


@case("data: CSV with a byte-order mark (valid)")
def _(root):
    (root / "out" / "t.csv").write_bytes(b"\xef\xbb\xbf" + (root / "table.csv").read_bytes())
    return [
        "train",
        *TINY,
        "--dataset",
        f"table:{root / 'out' / 't.csv'}",
        "--likelihood",
        "gaussian",
        "--out",
        str(root / "out" / "r"),
    ]


@case("data: CSV in latin-1")
def _(root):
    (root / "out" / "t.csv").write_bytes("caf\xe9,b,c\n1,2,3\n4,5,6\n".encode("latin-1") * 20)
    return [
        "train",
        *TINY,
        "--dataset",
        f"table:{root / 'out' / 't.csv'}",
        "--likelihood",
        "gaussian",
        "--out",
        str(root / "out" / "r"),
    ]


@case("data: ragged CSV")
def _(root):
    (root / "out" / "t.csv").write_text("1,2,3\n" * 30 + "1,2\n")
    return [
        "train",
        *TINY,
        "--dataset",
        f"table:{root / 'out' / 't.csv'}",
        "--likelihood",
        "gaussian",
        "--out",
        str(root / "out" / "r"),
    ]


@case("data: negative counts for poisson")
def _(root):
    counts = np.random.default_rng(0).poisson(2, size=(600, 4))
    counts[500, 2] = -1  # far past the first 256 rows
    np.savez(root / "out" / "c.npz", x=counts)
    return [
        "train",
        *TINY,
        "--dataset",
        f"table:{root / 'out' / 'c.npz'}",
        "--likelihood",
        "poisson",
        "--out",
        str(root / "out" / "r"),
    ]


@case("data: 16-bit PNG folder (valid)")
def _(root):
    folder = _images_folder(root, lambda p, i: _png(p, (np.arange(64).reshape(8, 8) * 1000 + i).astype(np.uint16)))
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


@case("data: palette PNG folder (valid)")
def _(root):
    palette = [v for k in range(256) for v in (k, k, k)]
    folder = _images_folder(
        root, lambda p, i: _png(p, (np.arange(64).reshape(8, 8) * 4).astype(np.uint8), "P", palette)
    )
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


@case("data: a 100-megapixel PNG")
def _(root):
    from PIL import Image

    folder = root / "out" / "big"
    folder.mkdir()
    Image.new("1", (10_000, 10_000)).save(folder / "big.png")  # small on disk, 100 Mpx decoded
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


@case("data: an empty folder")
def _(root):
    (root / "out" / "none").mkdir()
    return ["train", *TINY, "--dataset", f"folder:{root / 'out' / 'none'}", "--out", str(root / "out" / "r")]


@case("data: a folder of text files named .png")
def _(root):
    folder = _images_folder(root, lambda p, i: p.write_text("not an image"))
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


@case("data: a truncated PNG")
def _(root):
    def make(p, i):
        _png(p, np.full((8, 8), i * 10, np.uint8))
        if i == 5:
            p.write_bytes(p.read_bytes()[:40])

    folder = _images_folder(root, make)
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


@case("data: images of different sizes")
def _(root):
    folder = _images_folder(root, lambda p, i: _png(p, np.zeros((8 + i % 2, 8), np.uint8)))
    return ["train", *TINY, "--dataset", f"folder:{folder}", "--out", str(root / "out" / "r")]


# E. dangerous outputs
for _name, _out in {
    "out: the current directory": ".",
    "out: the user's folder": "mine",
    "out: a file": "mine/notes.txt",
    "out: under a file": "mine/notes.txt/r",
    "out: the home directory": "~",
}.items():
    CASES[_name] = (
        lambda o: (
            lambda root: ["train", *TINY, "--overwrite", "--out", os.path.expanduser(o) if o.startswith("~") else o]
        )
    )(_out)


@case("out: a symbolic link")
def _(root):
    (root / "out" / "link").symlink_to(root / "mine")
    return ["train", *TINY, "--overwrite", "--out", str(root / "out" / "link")]


@case("out: the folder holding the data")
def _(root):
    return [
        "train",
        *TINY,
        "--dataset",
        f"table:{root / 'table.csv'}",
        "--likelihood",
        "gaussian",
        "--overwrite",
        "--out",
        str(root),
    ]


@case("out: a run folder in use")
def _(root):
    lock = folders.locked(root / "run", "train")
    lock.__enter__()
    CLEANUP.append(lambda: lock.__exit__(None, None, None))
    return ["train", *TINY, "--overwrite", "--out", str(root / "run")]


for _name, _target in {
    "sample: into a pipe": "out/pipe.png",
    "sample: onto a folder": "mine",
    "sample: onto the checkpoint": "run/checkpoint.pt",
    "sample: onto the config": "run/config.json",
    "sample: an unknown suffix": "out/s.txt",
    "sample: a table as PNG": "out/t.png",
    "sample: under a file": "mine/notes.txt/s.png",
}.items():
    CASES[_name] = (
        lambda t: (
            lambda root: (
                os.mkfifo(root / "out" / "pipe.png") if t == "out/pipe.png" else None,
                ["sample", str(root / ("table-run" if t == "out/t.png" else "run")), "-n", "4", "--out", t],
            )[1]
        )
    )(_target)
CASES["sample: a table as CSV (valid)"] = lambda root: [
    "sample",
    str(root / "table-run"),
    "-n",
    "4",
    "--out",
    "out/t.csv",
]
#: The most samples ``sample -n`` accepts, and a budget they exceed: 8x8 digits at the 16 bytes per value that
#: ``sample_run`` counts need 97.7 MiB (the sweep's 256M would let them through). See the test below.
OVER_BUDGET, SAMPLE_BUDGET = 100_000, "64M"
CASES["sample: n over the budget"] = lambda root: [
    "sample",
    str(root / "run"),
    "-n",
    str(OVER_BUDGET),
    "--max-memory",
    SAMPLE_BUDGET,
    "--out",
    "out/s.png",
]


# F. the other commands
CASES.update(
    {
        "evaluate: K of zero": lambda root: ["evaluate", str(root / "run"), "-k", "0"],
        "evaluate: unknown device": lambda root: ["evaluate", str(root / "run"), "--device", "gpu9"],
        "evaluate: valid": lambda root: ["evaluate", str(root / "run"), "-k", "8", "--quiet"],
        "interpolate: one step": lambda root: ["interpolate", str(root / "run"), "--steps", "1"],
        "interpolate: a billion pairs": lambda root: ["interpolate", str(root / "run"), "--pairs", "1000000000"],
        "interpolate: into a pipe": lambda root: (
            os.mkfifo(root / "out" / "p.png"),
            ["interpolate", str(root / "run"), "--out", "out/p.png"],
        )[1],
        "interpolate: onto the checkpoint": lambda root: [
            "interpolate",
            str(root / "run"),
            "--out",
            str(root / "run" / "checkpoint.pt"),
        ],
        "traverse: a dimension out of range": lambda root: ["traverse", str(root / "run"), "--dims", "99"],
        "traverse: a billion steps": lambda root: ["traverse", str(root / "run"), "--steps", "1000000000"],
        "traverse: NaN range": lambda root: ["traverse", str(root / "run"), "--range", "nan"],
        "latent-map: a billion per side": lambda root: ["latent-map", str(root / "run"), "--grid", "1000000000"],
        "latent-map: the output folder is a file": lambda root: [
            "latent-map",
            str(root / "run"),
            "--out-dir",
            "mine/notes.txt",
        ],
        "latent-map: a table run": lambda root: ["latent-map", str(root / "table-run")],
        "grad-variance: a billion examples": lambda root: [
            "grad-variance",
            str(root / "run"),
            "--examples",
            "1000000000",
        ],
        "grad-variance: one repeat": lambda root: ["grad-variance", str(root / "run"), "--repeats", "1"],
        "diagnose: output is the run": lambda root: [
            "diagnose",
            str(root / "run"),
            "--out",
            str(root / "run"),
            "--overwrite",
        ],
        "diagnose: output contains the run": lambda root: [
            "diagnose",
            str(root / "run"),
            "--out",
            str(root),
            "--overwrite",
        ],
        "diagnose: output is the user's folder": lambda root: [
            "diagnose",
            str(root / "run"),
            "--out",
            "mine",
            "--overwrite",
        ],
        "diagnose: a billion samples": lambda root: ["diagnose", str(root / "run"), "--num-samples", "1000000000"],
        "compare-ae: output is the current directory": lambda root: ["compare-ae", "--out", ".", "--overwrite"],
        "compare-ae: output is the user's folder": lambda root: [
            "compare-ae",
            "--out",
            "mine",
            "--overwrite",
            "--epochs",
            "1",
        ],
        "compare-ae: a billion epochs": lambda root: ["compare-ae", "--epochs", "1000000000", "--out", "out/c"],
        "compare-ae: NaN beta": lambda root: ["compare-ae", "--betas", "nan", "--out", "out/c"],
        "list: extra argument": lambda root: ["list", "extra"],
        "no command": lambda root: [],
        "unknown command": lambda root: ["fly"],
    }
)

CLEANUP: list = []


def _snapshot(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == "out" or path.name == folders.LOCK or path.is_fifo():
            continue
        if path.is_symlink() or not path.is_file():
            out[str(relative)] = "link" if path.is_symlink() else "dir"
        else:
            out[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


#: Cases that must be refused, with a word their one line must hold: they cannot degrade into a valid run.
MUST_REFUSE = {
    "run: config hidden_dims huge": "each of hidden_dims must be an integer",
    "sample: n over the budget": f"more than the limit of {format_bytes(parse_size(SAMPLE_BUDGET))}",
}

#: Files a successful command may add or rewrite in the sandbox outside out/ (its documented outputs).
ALLOWED = ("eval.json", "figures/", "samples/", "diagnostics/", "run.json", "grad_variance.json")


def test_the_sweep_has_at_least_a_hundred_cases():
    assert len(CASES) >= 100, len(CASES)


def test_the_over_budget_case_is_over_its_budget_and_accepted_by_the_parser():
    """So that the budget refuses the case, not the parser's bound on -n (which once made it a valid run)."""
    assert OVER_BUDGET * 8 * 8 * 16 > parse_size(SAMPLE_BUDGET), "the case must exceed its budget"
    args = build_parser()[0].parse_args(["sample", "run", "-n", str(OVER_BUDGET), "--max-memory", SAMPLE_BUDGET])
    assert args.num_samples == OVER_BUDGET


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract(name, sandbox, capsys):
    argv = CASES[name](sandbox)
    before = _snapshot(sandbox)
    threads = torch.get_num_threads()
    try:
        result = main(list(argv))
    finally:
        torch.set_num_threads(threads)
        while CLEANUP:
            CLEANUP.pop()()
    err = capsys.readouterr().err
    assert result in (0, 2), f"exit {result}: {err}"
    if name in MUST_REFUSE:
        assert result == 2 and MUST_REFUSE[name] in err, f"exit {result}: {err}"
    assert "Traceback" not in err, err
    if result == 2:
        assert err.count("\n") == 1 and err.startswith("ppl-vae"), err
    after = _snapshot(sandbox)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    if result == 2:
        assert not changed, changed  # a refusal writes nothing
    else:
        assert all(any(part in k for part in ALLOWED) for k in changed), changed
        assert all(k in after for k in before), set(before) - set(after)  # nothing deleted
