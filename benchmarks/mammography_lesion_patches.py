"""mini-MIAS: a lesion-centred patch classifier pooled over each film (issue 14's mammography recipe).

A results script (issue 14: "the mammography pipeline learns"), not a test and not part of medpipe. The shipped
``pipelines/mammography.yaml`` (ResNet-18 on the whole film at 200 px) and its planned variant stay at chance
(macro AUC 0.51-0.54): a lesion of median radius 40 px on the 1024 grid (8 mm at mini-MIAS's 200 um per pixel) is
a few pixels of a 200 px film. This script tries the recipe the issue names, with the lesion centres and radii of
``findings.csv``:

1. **Films** ``png512/`` are reduced to ``--grid`` px (area filter; 256 = 800 um per pixel); the breast is the
   largest connected region above ``--breast-threshold`` after a binary opening (scipy.ndimage).
2. **Training patches** ``--patch-size`` px, from the training films of each fold only: ``--pos-per-lesion``
   patches centred on each lesion (jittered by up to half its radius, label benign / malignant from the finding)
   and ``--neg-per-film`` patches centred at random breast pixels outside every lesion (label tissue);
   flips and 90-degree rotations; class-balanced cross-entropy. Network: MONAI ``Classifier`` (4 strided residual
   stages, 16-128 channels, batch norm), AdamW with a one-cycle schedule. With ``--hard-negatives N``: the trained
   network scores every breast window of the training films, the N most lesion-like windows per film outside every
   lesion are added as tissue patches, and training goes on for ``--hard-epochs`` (hard negative mining).
   Per fold, ``val_patch_auc`` checks the patch classifier alone: lesion-centred against tissue patches of the
   held-out films.
3. **Film scores**: every ``--stride`` px window centred on the breast (MONAI ``SlidingWindowSplitter``) is
   classified; a film's benign / malignant score is the mean of its top 2 % window probabilities of that class, its
   normal score one minus the same for "not tissue" (the max-pooled heatmap of Shen et al., "Deep learning to
   improve breast cancer detection on screening mammography", Sci Rep 9:12495, 2019, with top-k pooling).
   Macro AUC = the mean of the three one-vs-rest ROC AUCs (scikit-learn), as ``medpipe.metrics`` defines it.

Protocol: stratified 5-fold cross-validation of all 322 films grouped by woman (scikit-learn
``StratifiedGroupKFold``, seed 0; mini-MIAS films come in pairs, right (odd number) and left (even) of one woman,
``Info.txt``), so both films of a woman are held out together. Reported: the cross-validated macro AUC (every film
scored by the fold model that did not train on it or its partner) with a bootstrap 95 % interval over films (1000
resamples), per class, for two film scores, under each pooling of :data:`POOLINGS` (``pooling`` in the JSON; the
top-level ``single_film`` / ``bilateral`` are the top-2 % pooling's):

* ``single_film``: the film's own scores;
* ``bilateral``: the film's scores minus its partner film's (the left-right comparison a radiologist makes: a
  lesion is in one breast, while dense tissue that fools the patch classifier is in both). It uses the partner's
  image, never its label.

Films without coordinates (4 abnormal: diffuse calcifications) give no positive patch but are scored like any film.

Usage::

    .venv/bin/python benchmarks/mammography_lesion_patches.py [--grid 256] [--patch-size 48] [--epochs 10]
        [--neg-per-film 40] [--pos-per-lesion 24] [--stride 16] [--hard-negatives 0] [--hard-epochs 3]
        [--out benchmarks/results/mammography_lesions.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = ("NORMAL", "BENIGN", "MALIGNANT")


def load_films(root: Path, grid: int, threshold: float):
    """``(refs, images (N, grid, grid) float32 0-1, breast masks, labels (N,), findings {ref: [(x, y, r, sev)]})``
    with coordinates in pixels of the ``grid`` (origin top-left)."""
    from PIL import Image
    from scipy import ndimage

    labels = {r["refnum"]: CLASSES.index(r["label"]) for r in csv.DictReader(open(root / "image_labels.csv"))}
    scale = grid / 512
    finds: dict = {}
    for r in csv.DictReader(open(root / "findings.csv")):
        if r["radius_512"]:
            finds.setdefault(r["refnum"], []).append((float(r["x_512"]) * scale, float(r["y_512_from_top"]) * scale,
                                                      float(r["radius_512"]) * scale, r["severity"]))
    refs = sorted(labels)
    images = np.stack([np.asarray(Image.open(root / "png512" / f"{r}.png").resize((grid, grid), Image.BOX),
                                  dtype=np.float32) / 255 for r in refs])
    masks = []
    for im in images:
        m = ndimage.binary_opening(im > threshold, iterations=2)
        lab, n = ndimage.label(m)
        sizes = ndimage.sum(m, lab, range(1, n + 1)) if n else []
        masks.append(lab == 1 + int(np.argmax(sizes)) if n else m)
    return refs, images, np.stack(masks), np.array([labels[r] for r in refs]), finds


def sample_patches(idx, refs, padded, masks, finds, args, rng):
    """Training patches ``(n, 1, P, P)`` and labels (0 tissue, 1 benign, 2 malignant) of the films ``idx``."""
    p, h = args.patch_size, args.patch_size // 2
    grid = masks.shape[-1]
    xs_, ys_ = [], []
    for i in idx:
        fs = finds.get(refs[i], [])
        for cx, cy, r, sev in fs:
            for _ in range(args.pos_per_lesion):
                jx, jy = rng.uniform(-0.5, 0.5, 2) * max(r, 2)
                x, y = (int(np.clip(round(c), 0, grid - 1)) for c in (cx + jx, cy + jy))
                xs_.append(padded[i, y:y + p, x:x + p])
                ys_.append(1 if sev == "B" else 2)
        yy, xx = np.nonzero(masks[i])
        k = tries = 0
        while k < args.neg_per_film and len(xx) and tries < 50 * args.neg_per_film:
            tries += 1
            t = rng.integers(len(xx))
            x, y = xx[t], yy[t]
            if any((x - cx) ** 2 + (y - cy) ** 2 < (r + h / 2) ** 2 for cx, cy, r, _ in fs):
                continue
            xs_.append(padded[i, y:y + p, x:x + p])
            ys_.append(0)
            k += 1
    return np.stack(xs_)[:, None], np.array(ys_)


def train_fold(x, y, args, seed, net=None, epochs=None):
    """A MONAI ``Classifier`` trained on the patches (or ``net`` trained further); returns it in eval mode."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import Classifier

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    epochs = epochs or args.epochs
    if net is None:
        net = Classifier(in_shape=(1, args.patch_size, args.patch_size), classes=3, channels=(16, 32, 64, 128),
                         strides=(2, 2, 2, 2), num_res_units=1, norm="BATCH", dropout=0.2)
    weights = torch.tensor(len(y) / (3 * np.bincount(y, minlength=3)), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    bs = 64
    steps = epochs * (len(y) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(y))
        for j in range(0, len(y) - bs + 1, bs):
            b = perm[j:j + bs]
            xb = xt[b]
            if rng.random() < 0.5:
                xb = xb.flip(3)
            if rng.random() < 0.5:
                xb = xb.flip(2)
            xb = torch.rot90(xb, int(rng.integers(4)), (2, 3))
            loss = F.cross_entropy(net(xb), yt[b], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def _windows(i, padded, masks, args):
    """The film's windows centred on the breast: ``(patches (n, 1, P, P) tensor, centres [(y, x)])``."""
    import torch
    from monai.inferers import SlidingWindowSplitter

    p, stride = args.patch_size, args.stride
    grid = masks.shape[-1]
    patches, centres = [], []
    for patch, loc in SlidingWindowSplitter(p, overlap=(p - stride) / p)(torch.from_numpy(padded[i])[None, None]):
        y, x = (min(int(v), grid - 1) for v in loc)  # top-left in the padded film = centre in the film
        if masks[i][y, x]:
            patches.append(patch)
            centres.append((y, x))
    return (torch.cat(patches) if patches else None), centres


def _predict(net, patches):
    import torch

    with torch.no_grad():
        return torch.cat([torch.softmax(net(patches[j:j + 256]), 1) for j in range(0, len(patches), 256)]).numpy()


def hard_negatives(net, idx, refs, padded, masks, finds, args):
    """The ``--hard-negatives`` windows per training film that the network scores most "not tissue" while lying
    outside every lesion (hard negative mining, as detection training does): ``(n, 1, P, P)`` patches."""
    h = args.patch_size / 2
    out = []
    for i in idx:
        patches, centres = _windows(i, padded, masks, args)
        if patches is None:
            continue
        fs = finds.get(refs[i], [])
        keep = [j for j, (y, x) in enumerate(centres)
                if all((x - cx) ** 2 + (y - cy) ** 2 >= (r + h) ** 2 for cx, cy, r, _ in fs)]
        if not keep:
            continue
        prob = _predict(net, patches[keep])
        top = np.argsort(prob[:, 0])[:args.hard_negatives]  # lowest tissue probability
        out.append(patches[keep][top].numpy())
    return np.concatenate(out)


#: how a film's window probabilities become its scores: mean of the top 2 % windows (the reported one), the single
#: most lesion-like window, and the top 2 % minus the film's median window (a lesion stands out of its own film)
POOLINGS = ("top2", "max", "relative")


def film_scores(net, idx, padded, masks, args):
    """``{pooling: (len(idx), 3)}`` film scores (normal, benign, malignant) for each of :data:`POOLINGS`."""
    out = {p: [] for p in POOLINGS}
    for i in idx:
        patches, _ = _windows(i, padded, masks, args)
        if patches is None:
            for p in POOLINGS:
                out[p].append([1.0, 0.0, 0.0])
            continue
        prob = _predict(net, patches)
        lesion = np.stack([1 - prob[:, 0], prob[:, 1], prob[:, 2]], 1)  # (windows, 3): "not tissue", B, M
        k = max(1, len(prob) // 50)
        top = np.sort(lesion, 0)[-k:].mean(0)
        pooled = {"top2": top, "max": lesion.max(0), "relative": top - np.median(lesion, 0)}
        for p, v in pooled.items():
            out[p].append([1 - v[0], v[1], v[2]])
    return {p: np.array(v) for p, v in out.items()}


def held_out_patch_auc(net, idx, refs, padded, masks, finds, args, rng) -> float:
    """ROC AUC of "not tissue" for the held-out films' lesion-centred patches against their tissue patches (sampled
    as for training): whether the patch classifier finds lesions at all, before any film-level pooling."""
    import torch
    from sklearn.metrics import roc_auc_score

    x, yp = sample_patches(idx, refs, padded, masks, finds, args, rng)
    prob = _predict(net, torch.from_numpy(x))
    return float(roc_auc_score(yp > 0, 1 - prob[:, 0]))


def macro_auc(y, scores) -> float:
    """Mean of the one-vs-rest ROC AUCs of the three classes."""
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(3)]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--patch-size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--neg-per-film", type=int, default=40)
    ap.add_argument("--pos-per-lesion", type=int, default=24)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--hard-negatives", type=int, default=0, help="per training film, then --hard-epochs more")
    ap.add_argument("--hard-epochs", type=int, default=3)
    ap.add_argument("--breast-threshold", type=float, default=0.12)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mammography_lesions.json"))
    args = ap.parse_args(argv)
    import torch
    from sklearn.model_selection import StratifiedGroupKFold

    from medpipe.data.cases import resolve_root

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    refs, images, masks, y, finds = load_films(resolve_root("mini_mias"), args.grid, args.breast_threshold)
    h = args.patch_size // 2
    padded = np.pad(images, ((0, 0), (h, h), (h, h)))
    woman = np.array([(int(r[3:]) - 1) // 2 for r in refs])  # Info.txt: films come in pairs, right (odd) / left
    partner = np.array([refs.index(f"mdb{(int(r[3:]) + (1 if int(r[3:]) % 2 else -1)):03d}") for r in refs])
    rng = np.random.default_rng(0)
    pooled = {p: np.full((len(refs), 3), np.nan) for p in POOLINGS}
    folds = []
    cv = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=0)
    for fold, (tr, va) in enumerate(cv.split(np.zeros(len(y)), y, woman)):
        x, yp = sample_patches(tr, refs, padded, masks, finds, args, rng)
        net = train_fold(x, yp, args, seed=fold)
        if args.hard_negatives:
            xh = hard_negatives(net, tr, refs, padded, masks, finds, args)
            x, yp = np.concatenate([x, xh]), np.concatenate([yp, np.zeros(len(xh), dtype=yp.dtype)])
            net = train_fold(x, yp, args, seed=100 + fold, net=net.train(), epochs=args.hard_epochs)
        for p, v in film_scores(net, va, padded, masks, args).items():
            pooled[p][va] = v
        scores = pooled["top2"]
        patch_auc = held_out_patch_auc(net, va, refs, padded, masks, finds, args, rng)
        folds.append({"fold": fold, "n_train_films": len(tr), "n_val_films": len(va), "n_patches": int(len(yp)),
                      "patches_per_class": np.bincount(yp, minlength=3).tolist(),
                      "val_macro_auc": macro_auc(y[va], scores[va]), "val_patch_auc": patch_auc,
                      "seconds": round(time.time() - t0, 1)})
        print(f"fold {fold}: {len(yp)} patches, validation macro AUC {folds[-1]['val_macro_auc']:.3f}, "
              f"patch AUC lesion vs tissue {patch_auc:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    from sklearn.metrics import roc_auc_score

    result = {"args": vars(args), "n_films": len(refs), "seconds": round(time.time() - t0, 1),
              "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}", "folds": folds, "pooling": {}}
    for pool, scores in pooled.items():
        # bilateral: a film's scores minus its partner's (both held out by the same fold: grouped split)
        for name, s in (("single_film", scores), ("bilateral", scores - scores[partner])):
            boot, brng = [], np.random.default_rng(0)
            for _ in range(1000):
                b = brng.integers(len(y), size=len(y))
                boot.append(macro_auc(y[b], s[b]))
            entry = {"cv_macro_auc": macro_auc(y, s),
                     "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                     "auc_per_class": {c: float(roc_auc_score(y == k, s[:, k])) for k, c in enumerate(CLASSES)}}
            result["pooling"].setdefault(pool, {})[name] = entry
            if pool == "top2":
                result[name] = entry
            print(pool, name, json.dumps(entry), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
