"""``guardnet eval``: measure a guard on real data against real and adaptive attacks."""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from guardnet.cli._args import json_object_arg

__all__ = ["ADAPTIVE_ATTACK_NAMES", "STANDARD_ATTACK_NAMES", "add_parser", "parse_eps"]

# The attacks' names without importing them (and torch), so that ``guardnet eval --help`` starts
# fast; tests/test_cli.py checks them against the registries of guardnet.eval.attacks.
STANDARD_ATTACK_NAMES = (
    "apgd",
    "apgdt",
    "autoattack",
    "bim",
    "cw",
    "deepfool",
    "ead",
    "fgsm",
    "jsma",
    "pgd",
    "pgdl2",
)
ADAPTIVE_ATTACK_NAMES = (
    "bpda",
    "detector",
    "hopskipjump",
    "orthogonal",
    "selective",
    "smooth",
    "square",
)


def parse_eps(text: str) -> float:
    """``"8/255"`` -> 0.0313..., ``"0.3"`` -> 0.3."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a budget: {text!r} (use 0.3 or 8/255)") from None
    if not 0 < value:
        raise argparse.ArgumentTypeError(f"a budget must be > 0, got {text!r}")
    return value


def _budget_arg(text: str) -> dict[str, Any] | str:
    """``--budget``: ``runner_up`` or a JSON object of shares."""
    return text if text == "runner_up" else json_object_arg(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` and its options to the CLI's subcommands."""
    ev = sub.add_parser(
        "eval",
        help="measure a guard against attacks (TPR, FPR, Acc_dec, Acc_rob, AUROC)",
        description="Build a guard, calibrate it on clean validation images, attack the test "
        "images the classifier gets right, and report clean accuracy, Acc_dec, FPR, TPR at each "
        "target FPR, AUROC, Acc_rob and Acc_RC, per-score rejections and timings: a table, a "
        "JSON report and PNG plots (ROC curves, robust accuracy vs budget, examples). Data: "
        "the real splits under --root / $GUARDNET_DATA, or the shipped fixtures (--fixtures, "
        "and automatically when the data is missing).",
        epilog="example: guardnet eval --guard gtsrb-mixdefense --attack pgd --eps 2/255 8/255 "
        "--adaptive orthogonal --adaptive-fpr 0.05 0.5 --limit 500",
    )
    ev.add_argument(
        "--guard",
        required=False,
        help="a guard recipe name (see --list-guards) or a JSON recipe file",
    )
    ev.add_argument("--list-guards", action="store_true", help="list the guard recipes and exit")
    ev.add_argument("--dataset", default=None, help="default: the recipe's dataset")
    ev.add_argument(
        "--attack",
        nargs="*",
        default=["pgd"],
        choices=STANDARD_ATTACK_NAMES,
        metavar="NAME",
        help=f"standard attacks on the classifier: {', '.join(STANDARD_ATTACK_NAMES)} "
        "(default pgd)",
    )
    ev.add_argument(
        "--eps",
        nargs="+",
        type=parse_eps,
        default=None,
        metavar="EPS",
        help="budgets for the attacks that take one, e.g. 2/255 8/255 or 0.3 (default: 8/255, "
        "0.3 on MNIST)",
    )
    ev.add_argument(
        "--l2-eps",
        nargs="+",
        type=parse_eps,
        default=None,
        metavar="EPS",
        help="L2 budgets of pgdl2 (default: 2.0 on MNIST, 0.5 otherwise)",
    )
    ev.add_argument(
        "--adaptive",
        nargs="*",
        default=[],
        choices=ADAPTIVE_ATTACK_NAMES,
        metavar="NAME",
        help=f"adaptive attacks on classifier + guard: {', '.join(ADAPTIVE_ATTACK_NAMES)}",
    )
    ev.add_argument(
        "--adaptive-eps",
        nargs="+",
        type=parse_eps,
        default=None,
        metavar="EPS",
        help="budgets of the adaptive attacks (default: the largest --eps)",
    )
    ev.add_argument(
        "--adaptive-fpr",
        nargs="+",
        type=float,
        default=[0.05],
        metavar="FPR",
        help="FPRs the guard is calibrated at for adaptive attacks (default 0.05; "
        "Bryniarski et al. also use 0.5)",
    )
    ev.add_argument(
        "--convergence",
        nargs="*",
        default=None,
        metavar="PARAM",
        help="sanity check: rerun every adaptive attack with PARAM doubled (steps, queries, "
        "iterations, restarts, eot_samples; no PARAM: each attack's own iteration count); the "
        "reruns count towards the worst case",
    )
    ev.add_argument(
        "--min-success",
        type=float,
        default=0.9,
        metavar="RATE",
        help="flag an adaptive attack whose success at the largest --adaptive-eps stays below "
        "RATE as possibly broken (default 0.9; needs two or more budgets)",
    )
    ev.add_argument(
        "--attack-args",
        type=json_object_arg,
        default=None,
        metavar="JSON",
        help='extra attack parameters per attack name, e.g. \'{"cw": {"steps": 100}, '
        '"orthogonal": {"steps": 100}}\'; a list runs each setting, every run in the worst '
        'case: \'{"selective": [{"steps": 50}, {"steps": 400}]}\'',
    )
    ev.add_argument(
        "--fpr", nargs="+", type=float, default=[0.05, 0.03], help="target FPRs (default 0.05 0.03)"
    )
    ev.add_argument(
        "--budget",
        type=_budget_arg,
        default=None,
        metavar="JSON|runner_up",
        help="relative share of the joint FPR budget per score (default equal), e.g. "
        '\'{"saec": 2, "contranet.dis": 0.5}\' (names: the report\'s per-score keys), or '
        "runner_up: chosen on the clean validation images under their runner-up labels",
    )
    ev.add_argument("--limit", type=int, default=None, help="test images (a seeded subset)")
    ev.add_argument("--val-limit", type=int, default=None, help="validation images")
    ev.add_argument("--fixtures", action="store_true", help="use the shipped fixtures")
    ev.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    ev.add_argument("--out", default=None, help="report folder (default runs/eval-GUARD)")
    ev.add_argument(
        "--cache", default=None, help="folder caching adversarial examples (safetensors)"
    )
    ev.add_argument("--batch-size", type=int, default=250, help="attack chunk size")
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ev.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(run=_run)


def _load_data(args: argparse.Namespace, dataset: str) -> tuple[Any, Any, Any, str]:
    from guardnet.data import dataset_info, load_fixture, load_split
    from guardnet.errors import DataNotFoundError

    info = dataset_info(dataset)
    fixture = "cifar10" if info.name.startswith("cifar10") else info.name
    if not args.fixtures:
        try:
            val = load_split(info.name, "val", root=args.root, limit=args.val_limit)
            test = load_split(info.name, "test", root=args.root, limit=args.limit)
            return val.images, test.images, test.labels, f"{info.display_name} (real splits)"
        except DataNotFoundError as error:
            print(f"guardnet eval: {error}; using the shipped fixtures", file=sys.stderr)
    val_images, _ = load_fixture(f"{fixture}-val")
    test_images, test_labels = load_fixture(fixture)
    if args.val_limit is not None:
        val_images = val_images[: args.val_limit]
    if args.limit is not None:
        test_images, test_labels = test_images[: args.limit], test_labels[: args.limit]
    return val_images, test_images, test_labels, f"{info.display_name} (shipped fixtures)"


def _settings(extra: dict[str, Any], name: str) -> list[tuple[dict[str, Any], str | None]]:
    """An attack's settings from ``--attack-args``: one object, or a list of them (variants)."""
    value = extra.get(name, {})
    if isinstance(value, dict):
        return [(value, None)]
    from guardnet.eval.harness import variant_name

    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ValueError(
            f"--attack-args: {name!r} must be an object of parameters or a non-empty list of "
            f'them, e.g. {{"{name}": [{{"steps": 50}}, {{"steps": 400}}]}}; got {value!r}'
        )
    if len(value) == 1:
        return [(value[0], None)]
    names = [variant_name(params) for params in value]
    if len(set(names)) != len(names):
        raise ValueError(f"--attack-args: {name!r} lists the same settings twice: {names}")
    return list(zip(value, names, strict=True))


def _plans(args: argparse.Namespace, dataset: str) -> list[Any]:
    from guardnet.eval.attacks import STANDARD_ATTACKS
    from guardnet.eval.harness import AttackPlan

    extra: dict[str, Any] = args.attack_args or {}
    eps = args.eps or ([0.3] if dataset == "mnist" else [8 / 255])
    plans = []
    l2_eps = args.l2_eps or ([2.0] if dataset == "mnist" else [0.5])
    for name in args.attack:
        takes_eps = STANDARD_ATTACKS[name][2]
        budgets = (l2_eps if name == "pgdl2" else eps) if takes_eps else [None]
        for params, variant in _settings(extra, name):
            for e in budgets:
                plans.append(AttackPlan(name, eps=e, params=params, variant=variant))
    for name in args.adaptive:
        for params, variant in _settings(extra, name):
            for e in args.adaptive_eps or [max(eps)]:
                for fpr in args.adaptive_fpr:
                    plans.append(
                        AttackPlan(
                            name, adaptive=True, eps=e, params=params, fpr=fpr, variant=variant
                        )
                    )
    return plans


def _run(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet eval``; returns the exit code."""
    import torch

    from guardnet.errors import GuardnetError
    from guardnet.eval.attacks import AdversarialCache
    from guardnet.eval.harness import evaluate_guard, format_report
    from guardnet.eval.plots import plot_robust_accuracy, plot_roc, save_examples
    from guardnet.guard import build_guard
    from guardnet.recipes import list_guards

    if args.list_guards:
        for recipe in list_guards():
            print(f"{recipe.name:<22} {recipe.dataset:<8} {recipe.description}")
        return 0
    if not args.guard:
        print("guardnet eval: error: --guard is required (see --list-guards)", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        guard = build_guard(args.guard, device=args.device)
        recipe = guard.recipe
        dataset = args.dataset or recipe.dataset
        plans = _plans(args, dataset)
        val_images, test_images, test_labels, source = _load_data(args, dataset)
        print(
            f"guardnet eval: guard {recipe.name} ({recipe.description}) on {source}: "
            f"{len(val_images)} validation, {len(test_labels)} test images"
        )
        out = Path(args.out or f"runs/eval-{recipe.name}")
        cache = AdversarialCache(args.cache) if args.cache else None
        report = evaluate_guard(
            guard,
            val_images=val_images.to(args.device),
            test_images=test_images.to(args.device),
            test_labels=test_labels.to(args.device),
            plans=plans,
            fprs=args.fpr,
            budget=args.budget,
            cache=cache,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
            min_success=args.min_success,
            convergence=True if args.convergence == [] else (args.convergence or False),
        )
    except (GuardnetError, ValueError, ImportError) as error:
        print(f"guardnet eval: error: {error}", file=sys.stderr)
        return 2
    examples = report.pop("examples")
    report.update(
        {
            "command": command,
            "guard": recipe.to_dict(),
            "data": source,
            "torch": torch.__version__,
            "device": str(args.device),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
    )
    print(format_report(report))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(_finite(report), indent=1, default=str) + "\n")
    written = [out / "report.json"]
    try:
        written.append(plot_roc(report, out / "roc.png", title=f"{recipe.name}: ROC"))
        curve = plot_robust_accuracy(report, out / "robust_accuracy.png")
        if curve is not None:
            written.append(curve)
    except ImportError as error:
        print(f"guardnet eval: no plots ({error})", file=sys.stderr)
    contranet = guard.layers["contranet"] if "contranet" in guard.layers else None
    written.append(
        save_examples(
            examples,
            out / "examples.png",
            rebuild=None if contranet is None else contranet.rebuild,
            classify=guard.classify,
        )
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _finite(value: Any) -> Any:
    """The report with NaN (no successful example, so no rate) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
