"""One-off conversion of the shared LPIPS / E-LPIPS linear weights into pickle-free package data.

Usage: python scripts/convert_weights.py ../shared/weights fastlpips/weights

Reads the original files (legacy torch pickles via ``torch.load(weights_only=True)``; the E-LPIPS
``np.save``'d dicts are the one place a pickle is opened, here, offline, from files whose sha256 is
checked first), writes ``.npz`` archives of plain float32 arrays and prints the content digests
that ``fastlpips/nets/weights.py`` pins.
"""
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastlpips.nets.weights import content_digest  # noqa: E402

SOURCE_SHA256 = {
    "lpips/v0.1_alex.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "lpips/v0.1_vgg.pth": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "lpips/v0.1_squeeze.pth": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
    "lpips/v0.0_alex.pth": "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5",
    "lpips/v0.0_vgg.pth": "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c",
    "lpips/v0.0_squeeze.pth": "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf",
    "elpips/vgg_full_avg.npy": "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e",
    "elpips/squeeze_full_maxpool.npy": "bcaae2eb93410893fb2f97b5fc57854ef9cc8ebb813304a617a5416b68bedc22",
}


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for rel, sha in SOURCE_SHA256.items():
        path = src / rel
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != sha:
            raise SystemExit(f"{path}: sha256 {got} != {sha}")
        if path.suffix == ".pth":
            sd = torch.load(path, map_location="cpu", weights_only=True)
            arrays = {k.split(".")[0]: v.numpy().astype(np.float32) for k, v in sd.items()}  # lin{k}
            out = dst / f"lpips_{path.stem}.npz"
        else:
            d = np.load(path, allow_pickle=True).item()
            # TF layout (1, 1, C, 1) -> (1, C, 1, 1) like the LPIPS lin convs.
            arrays = {k.split(".")[0]: np.ascontiguousarray(np.asarray(v, np.float32).reshape(1, -1, 1, 1))
                      for k, v in d.items()}
            out = dst / f"elpips_{path.stem}.npz"
        np.savez(out, **arrays)
        print(f'    "{out.name}": "{content_digest(arrays)}",')


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
