"""E-LPIPS geometry: ``barycenter`` (the image nearest to all inputs) and ``geodesic`` (the frames
between two images), saved as PNG (and grid, GIF, MP4)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from . import common as C


def register(sub, parents: C.Parents) -> None:
    for name in ("barycenter", "geodesic"):
        s = sub.add_parser(name, parents=[parents.common, parents.progress], help=(
            "the image minimizing the sum of squared distances to the inputs" if name == "barycenter" else
            "the frames between two images minimizing the sum of squared distances along the chain")
            + " (E-LPIPS paper section 3.3; Adam with the release's schedule)")
        if name == "barycenter":
            s.add_argument("images", nargs="+", help="two or more images of one size")
            s.add_argument("--inputs-per-step", type=int, help="random inputs per step (default all; the release: 1)")
            s.add_argument("--grid", metavar="GRID.png", help="also save the inputs and the barycenter side by side")
        else:
            s.add_argument("a")
            s.add_argument("b")
            s.add_argument("--frames", type=int, default=8, help="free frames between the ends (8)")
            s.add_argument("--init", default="noise", choices=["noise", "linear"], help="start (noise: the release's)")
            s.add_argument("--gif", metavar="OUT.gif", help="also save the chain as an animated GIF")
            s.add_argument("--mp4", metavar="OUT.mp4",
                           help="also save the chain as an H.264 video (needs imageio-ffmpeg)")
        s.add_argument("--save", required=True, metavar="OUT.png",
                       help="the barycenter" if name == "barycenter" else "the chain, ends included, side by side")
        C.metric_argument(s, "--distance", default="elpips",
                          what="the distance (lower-better and differentiable: elpips, lpips-vgg, euclidean, ...)")
        s.add_argument("--steps", type=int, default=1000)
        s.add_argument("--lr", type=float, default=0.03)
        s.add_argument("--draws", type=int, default=1, help="E-LPIPS draws per distance per step (1, as the release)")
        s.add_argument("--seed", type=int, default=0)
        C.families_argument(s)
        s.set_defaults(func=run_barycenter if name == "barycenter" else run_geodesic, validate=validate, batch_size=1)


def validate(args) -> List[Path]:
    C.check_minimum(args, ("steps", "draws", "frames", "inputs_per_step"), 1)
    inputs = [Path(p) for p in (args.images if args.command == "barycenter" else [args.a, args.b])]
    if args.command == "barycenter" and len(inputs) < 2:
        raise C.CLIError(f"a barycenter needs at least 2 images, got {len(inputs)}")
    for opt, path in (("--save", args.save), ("--grid", getattr(args, "grid", None)),
                      ("--gif", getattr(args, "gif", None)), ("--mp4", getattr(args, "mp4", None))):
        if path:
            C.check_output_path(path, opt, inputs)
    return inputs


# -- running -------------------------------------------------------------------------------------------
def _distance(args):
    """--distance, or with --families an E-LPIPS of those families (shared draws per step)."""
    if args.families is None:
        return args.distance
    if args.distance != "elpips":
        raise C.CLIError(f"--families applies to --distance elpips, not {args.distance}")
    from ..attacks.distances import ELPIPSDistance
    from ..elpips import ELPIPS

    metric = ELPIPS(families=args.families, device=args.device).requires_grad_(False)
    return ELPIPSDistance(metric, samples=args.draws, seed=args.seed, shared=True)


def run_barycenter(args) -> C.Result:
    """argmin_x sum_i d(x, n_i)^2 of the input images (E-LPIPS paper section 3.3)."""
    from ..geometry import barycenter

    images = C.same_size_images(args.images).to(args.device)
    r = barycenter(images, _distance(args), steps=args.steps, lr=args.lr, inputs_per_step=args.inputs_per_step,
                   seed=args.seed, draws=args.draws, progress=args.progress)
    C.save_png(r.images[0], args.save)
    res = C.Result(["inputs", "distance", "steps", "first_loss", "final_loss", "saved"])
    res.rows.append({"inputs": len(args.images), "distance": args.distance, "steps": args.steps,
                     "first_loss": r.losses[0], "final_loss": r.losses[-1], "saved": args.save})
    if args.grid:
        res.pictures.append(C.Picture(f"the grid --grid {args.grid}",
                                    lambda: C.save_png(torch.cat([images.cpu(), r.images.cpu()]), args.grid),
                                    f"inputs and barycenter written to {args.grid}"))
    return res


def run_geodesic(args) -> C.Result:
    """The discrete geodesic between two images (E-LPIPS paper section 3.3)."""
    from ..geometry import geodesic

    ab = C.same_size_images([args.a, args.b]).to(args.device)
    r = geodesic(ab[0], ab[1], _distance(args), frames=args.frames, steps=args.steps, lr=args.lr, init=args.init,
                 seed=args.seed, draws=args.draws, progress=args.progress)
    C.save_png(r.images.cpu(), args.save)
    res = C.Result(["frames", "distance", "steps", "first_loss", "final_loss", "saved"])
    res.rows.append({"frames": args.frames, "distance": args.distance, "steps": args.steps,
                     "first_loss": r.losses[0], "final_loss": r.losses[-1], "saved": args.save})
    if args.gif:
        res.pictures.append(C.Picture(f"the animation --gif {args.gif}", lambda: C.save_gif(r.images.cpu(), args.gif),
                                    f"animation written to {args.gif}"))
    if args.mp4:
        res.pictures.append(C.Picture(f"the video --mp4 {args.mp4}", lambda: C.save_mp4(r.images.cpu(), args.mp4),
                                    f"video written to {args.mp4}"))
    return res


