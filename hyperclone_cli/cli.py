"""The command line: parse, call the library, render with rich, set the exit code.
No math and no I/O logic lives here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument, TyperCommand

from ._version import __version__
from .errors import EXIT_INPUT, EXIT_SIGINT, EXIT_USAGE, HypercloneError
from .recipe import choices

app = typer.Typer(
    name="hyperclone",
    help="Widen a pretrained causal LM into a larger one that computes the same function.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)


class Command(TyperCommand):
    """Usage lines as click writes them, `expand [OPTIONS] SRC DST`: typer 0.29 puts
    braces around required arguments (`{SRC}`), which read as a placeholder set."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument) and param.required and param.nargs == 1:
                pieces.append(param.metavar or (param.name or "").upper())
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


SOURCE_HELP = "Source checkpoint: a directory, or a hub id (org/name; a local path wins)."
Revision = Annotated[
    str | None,
    typer.Option(help="Hub revision (branch, tag or commit) when the source is a hub id."),
]


def _choice(key: str) -> type[Enum]:
    """An Enum of the values the recipe key accepts, so typer shows and checks them: the
    recipe's types are the one list of choices."""
    values = choices(key)
    return Enum(key.title().replace("_", ""), {v: v for v in values}, type=str)  # type: ignore[return-value]


Attention = _choice("attention")
KV = _choice("kv_heads")
Layout = _choice("layout")
Device = _choice("device")
Placement = _choice("layer_placement")


def _version(value: bool) -> None:
    if value:
        out.print(f"hyperclone {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Widen a pretrained causal LM into a larger one that computes the same function."""
    # --debug is read by main() from the arguments, before typer parses them


def _val(e: Enum | None) -> str | None:
    return e.value if e is not None else None


def _progress_bar():
    """A transient bar on stderr, shown only on a terminal; tasks carry an `amount` text
    (bytes written, layers run)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _layers_task(bar):
    """A `progress(done, total)` for verification: a 'verifying' task in decoder layers."""
    task = None

    def on_layers(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("verifying", total=total, amount="")
        bar.update(task, completed=done, amount=f"{done}/{total} layers")

    return on_layers


@app.command(
    cls=Command, short_help="Widen SRC into DST: stream, expand, verify, then move into place."
)
def expand(
    # readable=False: expand checks access itself, with its own message and exit code
    src: Annotated[Path, typer.Argument(help=SOURCE_HELP, readable=False, metavar="SRC")],
    dst: Annotated[
        Path,
        typer.Argument(
            help="Destination directory (must not exist).", readable=False, metavar="DST"
        ),
    ],
    revision: Revision = None,
    factor: Annotated[
        int | None, typer.Option(help="Hidden-size multiplier n (default 2).")
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="YAML recipe; flags override it.")] = None,
    ffn_factor: Annotated[
        int | None, typer.Option(help="FFN multiplier (default: factor).")
    ] = None,
    noise: Annotated[
        float | None, typer.Option(help="Symmetry-breaking noise as SNR in dB (off by default).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the noise.")] = None,
    attention: Annotated[
        Attention | None, typer.Option(help="heads: more heads; head-dim: wider heads.")
    ] = None,
    kv_heads: Annotated[
        KV | None, typer.Option(help="GQA: replicate KV heads, or keep them (and the KV cache).")
    ] = None,
    layout: Annotated[
        Layout | None,
        typer.Option(help="Blocks where both sides widen: W/n everywhere, or W on the diagonal."),
    ] = None,
    untie: Annotated[
        bool, typer.Option("--untie", help="Write lm_head explicitly instead of keeping a tie.")
    ] = False,
    add_layers: Annotated[
        int | None,
        typer.Option(help="Insert K new blocks that start as the identity (alone: factor 1)."),
    ] = None,
    layer_placement: Annotated[
        Placement | None,
        typer.Option(help="Where new blocks go: even (every L/K layers), top or bottom."),
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Where to compute (default auto).")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Output dtype: float32, bfloat16 or float16 (fp32, bf16, fp16 also accepted; "
            "default: the source's)."
        ),
    ] = None,
    shard_size: Annotated[str | None, typer.Option(help="Largest shard, e.g. 5GB.")] = None,
    tolerance: Annotated[
        float | None, typer.Option(help="Verify tolerance (relative logit error).")
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verification.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace DST once the new one is verified.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and report; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    experts: Annotated[
        int | None,
        typer.Option(help="Upcycle a dense model into this many experts (factor 1 allowed)."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Experts per token when upcycling (default 2).")
    ] = None,
) -> None:
    """Widen SRC into DST: stream, expand, verify, then move into place."""
    from .pipeline import expand as run_expand
    from .units import format_size

    bar = _progress_bar()
    task = None

    def on_plan(plan) -> None:
        nonlocal task
        task = bar.add_task("expanding", total=plan.target_bytes, amount="")

    def on_bytes(n: int) -> None:
        bar.advance(task, n)
        t = bar.tasks[task]
        bar.update(task, amount=f"{format_size(t.completed)} / {format_size(t.total)}")

    with bar:
        result = run_expand(
            src,
            dst,
            recipe=recipe,
            force=force,
            dry_run=dry_run,
            progress=on_bytes,
            on_plan=on_plan,
            verify_progress=_layers_task(bar),
            revision=revision,
            factor=factor,
            ffn_factor=ffn_factor,
            noise=noise,
            seed=seed,
            attention=_val(attention),
            kv_heads=_val(kv_heads),
            layout=_val(layout),
            tie="untie" if untie else None,
            add_layers=add_layers,
            layer_placement=_val(layer_placement),
            device=_val(device),
            dtype=dtype,
            shard_size=shard_size,
            verify_tolerance=tolerance,
            verify=False if no_verify else None,
            experts=experts,
            top_k=top_k,
        )
    s = result.summary()
    if as_json:
        out.print_json(json.dumps(s))
        return
    title = "dry run: nothing written" if dry_run else f"wrote {dst}"
    out.print(_rows_table(title, result.rows()))


def _rows_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False)
    for label, value in rows:
        t.add_row(label, value)
    return t


@app.command(
    cls=Command, short_help="Run the same tokens through SRC and DST and compare the logits."
)
def verify(
    src: Annotated[Path, typer.Argument(help=SOURCE_HELP, metavar="SRC")],
    dst: Annotated[
        Path, typer.Argument(help="Widened checkpoint (directory or hub id).", metavar="DST")
    ],
    revision: Revision = None,
    tolerance: Annotated[
        float | None, typer.Option(help="Largest relative logit error allowed.")
    ] = None,
    streamed: Annotated[
        bool | None,
        typer.Option(
            "--streamed/--full",
            help="Load one module's weights at a time (default; full where a model cannot "
            "be streamed), or each model whole (also compares a greedy continuation).",
        ),
    ] = None,
    device: Annotated[
        Device | None, typer.Option(help="Where to run (default auto: cuda when present).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run the same tokens through SRC and DST and compare the logits."""
    from .pipeline import resolve_device
    from .summary import verification_words
    from .verification import verify as run_verify

    dev = resolve_device(_val(device) or "auto")
    bar = _progress_bar()
    with bar:
        on_layers = _layers_task(bar)
        report = run_verify(
            src,
            dst,
            tolerance=tolerance,
            streamed=streamed,
            device=str(dev),
            revision=revision,
            progress=on_layers,
        )
    d = report.to_dict()
    if as_json:
        out.print_json(json.dumps(d))
    else:
        t = Table(title=f"verify ({d['mode']})", show_header=False)
        t.add_row("max |Δlogit|", f"{d['max_abs_diff']:.4g}")
        t.add_row("relative error", f"{d['rel_error']:.4g} (tolerance {d['tolerance']:.3g})")
        t.add_row("KL", f"{d['kl']:.4g}")
        t.add_row("top-1 agreement", f"{d['top1_agreement']:.4f}")
        if d.get("greedy_match") is not None:
            t.add_row("greedy tokens", "identical" if d["greedy_match"] else "differ")
        if d.get("missing_keys") or d.get("unexpected_keys"):
            t.add_row("missing / unexpected", f"{d['missing_keys']} / {d['unexpected_keys']}")
        if d.get("first_bad_layer") is not None:
            t.add_row("first diverging layer", str(d["first_bad_layer"]))
        t.add_row("verification", verification_words(d))
        out.print(t)
    report.raise_if_failed()


def _changed(architecture: str, d: dict) -> str:
    """The output's architecture where it differs (upcycling), else blank."""
    return "" if architecture == d["architecture"] else architecture


def _moe_rows(
    src: dict | None, exp: dict | None, params: int, exp_params: int | None
) -> list[tuple[str, str, str]]:
    """Experts / top-k / shared experts and the parameters active per token, before and after
    (a dense model: all of them)."""

    def experts(m: dict | None) -> str:
        return f"{m['experts']} / {m['top_k']} / {m['shared_experts']}" if m else "dense"

    def active(m: dict | None, total: int) -> str:
        return f"{m['active_params'] if m else total:,}"

    return [
        ("experts / top-k / shared", experts(src), exp_params and experts(exp)),
        (
            "active parameters per token",
            active(src, params),
            exp_params and active(exp, exp_params),
        ),
    ]


@app.command(
    "inspect", cls=Command, short_help="Describe a checkpoint, and what an expansion would produce."
)
def inspect_cmd(
    path: Annotated[
        Path,
        typer.Argument(help="Checkpoint: a directory, or a hub id (org/name).", metavar="PATH"),
    ],
    revision: Revision = None,
    factor: Annotated[
        int | None, typer.Option(help="Also show what ×factor would produce.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Also show what this recipe would produce.")
    ] = None,
    add_layers: Annotated[
        int | None, typer.Option(help="Also show the layer map with K new blocks.")
    ] = None,
    layer_placement: Annotated[
        Placement | None, typer.Option(help="Where new blocks go: even, top or bottom.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    experts: Annotated[
        int | None, typer.Option(help="Also show what upcycling into this many experts gives.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Experts per token when upcycling.")] = None,
) -> None:
    """Architecture, sizes, shards, dtypes, tie, heads; and what an expansion would produce."""
    from .inspection import inspect as run_inspect
    from .summary import dtype_words, tie_words
    from .units import format_size

    growth = {"add_layers": add_layers, "layer_placement": _val(layer_placement)}
    growth |= {"experts": experts, "top_k": top_k}
    info = run_inspect(path, factor=factor, recipe=recipe, revision=revision, **growth)
    d = info.to_dict()
    if as_json:
        out.print_json(json.dumps(d))
        return
    t = Table(title=str(path), show_header=True)
    t.add_column("")
    t.add_column("source")
    exp = d["expansion"] or {}
    if exp:
        t.add_column(
            f"×{exp['factor']}"
            + (f", +{exp['add_layers']} layers" if exp.get("add_layers") else "")
        )
    rows = [
        ("architecture", d["architecture"], exp and _changed(exp["architecture"], d)),
        ("family", d["family"] or "unsupported", ""),
        ("parameters", f"{d['params']:,}", exp and f"{exp['params']:,}"),
        ("bytes", format_size(d["bytes"]), exp and format_size(exp["bytes"])),
        ("dtype", dtype_words(d["dtypes"]), exp and exp["settings"]["dtype"]),
        ("shards", str(len(d["shards"])), exp and str(exp["shards"])),
        ("hidden", str(d["hidden"]), exp and str(exp["hidden"])),
        ("ffn", str(d["ffn"]), exp and str(exp["ffn"])),
        # with --add-layers: "4 → 6: 0 1 1+ 2 3 3+" (n+: a new block, a copy of layer n)
        ("layers", str(d["layers"]), exp and exp["settings"].get("layers", str(exp["layers"]))),
        (
            "heads / kv / head_dim",
            f"{d['heads']} / {d['kv_heads']} / {d['head_dim']}",
            exp and f"{exp['heads']} / {exp['kv_heads']} / {exp['head_dim']}",
        ),
        ("tied embeddings", tie_words(d["tied"]), exp and tie_words(exp["tie"])),
    ]
    src_moe, exp_moe = d["moe"], exp and exp["moe"]
    if src_moe or exp_moe:
        rows += _moe_rows(src_moe, exp_moe, d["params"], exp and exp["params"])
    if exp:
        # the choices not shown above, in the words of expand's summary and the model card
        shown = {"family", "dtype", "tied embeddings", "factor", "attention", "kv heads", "layers"}
        rows += [(k, "", v) for k, v in exp["settings"].items() if k not in shown]
        rows.append(("predicted peak RSS", "", _memory_words(exp)))
    for name, a, b in rows:
        t.add_row(name, a, *([b or ""] if exp else []))
    out.print(t)


def _memory_words(exp: dict) -> str:
    from .units import format_size

    whole = format_size(exp["predicted_peak_rss_bytes"])
    writing = format_size(exp["predicted_expand_rss_bytes"])
    if exp["verify_mode"] == "off":
        return f"{whole} (writing; verification off)"
    verifying = format_size(exp["predicted_verify_rss_bytes"])
    return f"{whole} (writing {writing}, {exp['verify_mode']} verification {verifying})"


@app.command("families", short_help="List the supported architectures and their options.")
def families_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Every family hyperclone can widen: the `architectures` it accepts, and which options
    each supports (--attention head-dim, --kv-heads keep, keeping a tied head)."""
    from .families import describe_families

    fams = describe_families()
    if as_json:
        out.print_json(json.dumps(fams))
        return
    t = Table(title="supported families")
    cols = ("family", "architectures", "head-dim attention", "keep kv heads", "tied head")
    for col in (*cols, "add layers"):
        t.add_column(col, no_wrap=col == "architectures")
    for f in fams:
        t.add_row(
            f["family"],
            "\n".join(f["architectures"]),
            "yes" if f["attention_head_dim"] else "no (rotary)",
            "yes" if f["kv_heads_keep"] else "no",
            f["tie"],
            f["add_layers"],
        )
    out.print(t)


def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """The class `name` from click and from the copy of click that typer vendors
    (typer >= 0.16 raises its own), so both are caught whichever one is installed."""
    found: list[type[BaseException]] = [getattr(click.exceptions, name)]
    with contextlib.suppress(ImportError, AttributeError):
        from typer._click import exceptions as vendored

        found.append(getattr(vendored, name))
    return tuple(found)


_USAGE_ERRORS = _click_errors("UsageError")
_EXITS = _click_errors("Exit") + (typer.Exit,)
_ABORTS = _click_errors("Abort") + (typer.Abort,)


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit: rich would wrap long lines at the console width."""
    sys.stderr.write(" ".join(message.split()) + "\n")
    sys.stderr.flush()
    sys.exit(code)


# typer checks option types with pydantic: its wording, put in ours
_TYPE_WORDS = {
    "Input should be a valid integer, unable to parse string as an integer": (
        "must be a whole number"
    ),
    "Input should be a valid number, unable to parse string as a number": "must be a number",
}


def _usage_message(e: Exception, args: list[str]) -> str:
    """A usage error as one line in our words: `option --flag: what is wrong (got 'value')`."""
    message = e.format_message()  # type: ignore[attr-defined]
    param = getattr(e, "param", None)
    opts = list(getattr(param, "opts", None) or [])
    if not opts or not message.startswith("Invalid value for"):
        return message
    what = message.split(": ", 1)[-1].removeprefix("Value error, ")
    what = _TYPE_WORDS.get(what.rstrip("."), what)
    what = re.sub(r"^'.*' is not one of (.*)\.$", r"must be one of \1", what)
    flag = max(opts, key=len)
    got = next(
        (
            a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else None)
            for i, a in enumerate(args)
            if a in opts or a.split("=", 1)[0] in opts
        ),
        None,
    )
    return f"option {flag}: {what}" + (f" (got {got!r})" if got is not None else "")


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    # --debug is accepted anywhere before a `--`, also after the command name
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end] or bool(os.environ.get("HYPERCLONE_DEBUG"))
    if "--debug" in args[1:end]:
        args = [a for i, a in enumerate(args) if i >= end or a != "--debug"]
    # transformers' loading bars and advisories would add lines to stderr around our one
    # (hub.py turns the hub's bars back on for a download); the hub is reached only for a
    # source given as a hub id that is not in the cache
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not debug:  # library warnings would add lines to stderr; --debug shows them
        warnings.simplefilter("ignore")
    try:
        rc = app(args=args, prog_name="hyperclone", standalone_mode=False)
    except _EXITS as e:
        sys.exit(e.exit_code)
    except _USAGE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(e.format_message() + "\n")
            sys.exit(EXIT_USAGE)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "hyperclone"
        _fail(f"hyperclone: error: {_usage_message(e, args)} (see '{where} --help')", EXIT_USAGE)
    except (*_ABORTS, KeyboardInterrupt):
        _fail("hyperclone: error: interrupted; nothing was written", EXIT_SIGINT)
    except HypercloneError as e:
        if debug:
            raise
        _fail(f"hyperclone: error: {e}", e.code)
    except Exception as e:  # a bug: still one line, unless --debug
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        _fail(
            f"hyperclone: internal error: {type(e).__name__}: {msg} (rerun with --debug)",
            EXIT_INPUT,
        )
    # typer returns (not raises) the code of an Exit, e.g. 130 after Ctrl-C outside expand
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        if rc == EXIT_SIGINT:
            _fail("hyperclone: error: interrupted; nothing was written", EXIT_SIGINT)
        sys.exit(rc)


if __name__ == "__main__":
    main()
