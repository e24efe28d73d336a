"""``edgeq finetune``: fine-tune an INT8 bundle on labelled data within a device's memory budget."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

CLI_METHODS = ("qas", "zo", "elastic", "sgd")


def cmd_finetune(args: argparse.Namespace) -> None:
    """Train, write the tuned bundle atomically, print the scheme, memory and accuracy."""
    from .api import Bundle, load
    from .errors import InputError
    from .finetune import finetune, load_data, plot_training, write_tuned

    if args.epochs < 1 or args.batch < 1:
        raise InputError("--epochs and --batch must be at least 1")
    if args.plot:
        from .plots import check_target
        check_target(args.plot)
    bundle = load(args.bundle, backend="reference")
    if not isinstance(bundle, Bundle):
        raise InputError(f"'{args.bundle}' is an LLM bundle; fine-tuning needs an op-graph classifier bundle")
    x, y = load_data(args.data, bundle)
    eval_data = load_data(args.eval, bundle) if args.eval else None
    r = finetune(bundle, x, y, args.device, args.method, epochs=args.epochs, batch=args.batch, lr=args.lr,
                 seed=args.seed, budget_bytes=args.budget, eval_data=eval_data, progress=not (args.json or args.quiet))
    size = write_tuned(bundle, r, args.out)
    if args.plot:
        plot_training([r], args.plot)
    data = {**r.to_dict(), "output": args.out, "output_bytes": size}
    m = r.memory
    what = "eval" if args.eval else "training"
    lines = [f"wrote {args.out} ({size} bytes): {r.method} on {r.device}, {args.epochs} epochs in {r.seconds:.1f} s",
             f"updates: {r.scheme.describe() if r.scheme else 'none by backprop'}"
             + (f"; SPSA: weights of {', '.join(r.zo_layers)}" if r.zo_layers else ""),
             f"memory beyond inference: {m.extra} bytes (saved activations {m.saved_activations}, gradients "
             f"{m.gradients}, parameters {m.parameters}, optimizer {m.optimizer_state}, seed {m.seed}); "
             f"budget {r.budget_bytes} bytes; inference arena {m.arena} bytes",
             f"{what} accuracy: {100 * r.accuracy[0]:.2f}% -> {100 * r.accuracy[-1]:.2f}%; "
             f"loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}"]
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))


def add_commands(add: Callable[..., Any]) -> None:
    """Register ``finetune`` with the CLI's ``add(name, fn, help)`` (which adds --json)."""
    f = add("finetune", cmd_finetune, "fine-tune an INT8 bundle on labelled data within a device's memory budget "
                                      "(sparse update with QAS, zeroth-order SPSA, or the ElasticZO split)")
    f.add_argument("bundle")
    f.add_argument("--data", required=True, help=".npz with 'x' (float inputs, batch first) and 'y' (integer labels)")
    f.add_argument("--device", required=True, help="device profile id: its RAM minus the inference arena is the budget")
    f.add_argument("--method", choices=CLI_METHODS, default="qas",
                   help="qas: sparse backprop update with quantization-aware scaling; zo: SPSA on all weights; "
                        "elastic: SPSA first layers + QAS last layers; sgd: int8 SGD without QAS (comparison)")
    f.add_argument("--out", required=True, help="tuned bundle path (written atomically)")
    f.add_argument("--eval", help=".npz like --data to report accuracy on (default: the training data)")
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--batch", type=int, default=16)
    f.add_argument("--lr", type=float, help="learning rate (default 0.1; zo 2.0 in int8 weight units)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--budget", type=int, help="bytes beyond inference training may use (default: from --device)")
    f.add_argument("--plot", metavar="FILE.png", help="draw the loss and accuracy curves and the memory")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
