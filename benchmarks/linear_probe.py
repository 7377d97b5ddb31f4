"""How much a pre-trained Spikformer V2 encoder learned: kNN and linear probes of its frozen features.

MAE's own yardstick.  For the encoder of a ``spikingformer pretrain`` checkpoint (``--encoder``),
and for the same architecture at random initialisation (the baseline, in the same run):

1. BatchNorm running statistics are recomputed on ``--calibrate`` unaugmented training images.
   Pre-training normalised over the visible quarter of each image (sparse BN), and a random
   encoder has none, so neither set describes whole images.
2. Each image's feature is the classifier head's input: the encoder's tokens averaged over tokens
   and time steps (``forward_features``, then the mean of ``avgpool_fc``).
3. kNN: cosine similarity, the ``--k`` nearest training images vote.  Linear: scikit-learn's
   logistic regression on standardised features.  Both are scored on the held-out split.

The data and model come from a fine-tuning recipe (``--config``, e.g. configs/cifar10_v2_finetune.yaml):
its ``limit_train`` / ``limit_val`` size the probe's training and held-out sets.

    python benchmarks/linear_probe.py --config configs/cifar10_v2_finetune.yaml \\
        --set data_dir=DIR --encoder runs/cifar10_v2_mae_pretrain/last.pt --json probe.json
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.data import DataLoader

from spikingformer import create_model
from spikingformer.data import DataError, build_data
from spikingformer.data.sampler import SeededTransform
from spikingformer.train.classify import model_kwargs
from spikingformer.train.config import ConfigError, load_config
from spikingformer.train.engine import resolve_img_size
from spikingformer.train.pretrain import load_pretrained_encoder
from spikingformer.utils.outputs import write_json
from spikingformer.weights.checkpoint import CheckpointError
from spikingformer.analysis.batches import calibrate_bn


@torch.no_grad()
def features(model, dataset, batch_size: int, collate) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, D]`` features (the head's input, as ``avgpool_fc`` pools it) and ``[N]`` labels."""
    feats, labels = [], []
    for x, y in DataLoader(dataset, batch_size, collate_fn=collate):
        feats.append(model.forward_features(x).mean(dim=(0, 2)))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_f, train_y, test_f, test_y, k: int, num_classes: int) -> float:
    sim = torch.nn.functional.normalize(test_f, dim=1) @ torch.nn.functional.normalize(train_f, dim=1).T
    nearest = sim.topk(min(k, len(train_f)), dim=1).indices
    votes = torch.zeros(len(test_f), num_classes).scatter_add_(1, train_y[nearest], torch.ones(nearest.shape))
    return (votes.argmax(1) == test_y).float().mean().item()


def linear_accuracy(train_f, train_y, test_f, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(train_f.numpy())
    clf = LogisticRegression(max_iter=2000).fit(scale.transform(train_f.numpy()), train_y.numpy())
    return float(clf.score(scale.transform(test_f.numpy()), test_y.numpy()))


def probe(cfg, encoder: str | None, args) -> dict:
    data = build_data(cfg, resolve_img_size(cfg))
    train = SeededTransform(data.train.base, data.val.transform)  # unaugmented, as the held-out images
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **model_kwargs(cfg, len(data.classes), data.in_chans))
    if encoder:
        load_pretrained_encoder(model, encoder)
    loader = DataLoader(train, args.batch_size, collate_fn=data.collate, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    calibrate_bn(model, [x for _, (x, _) in zip(range(-(-args.calibrate // args.batch_size)), loader)])
    t0 = time.time()
    train_f, train_y = features(model, train, args.batch_size, data.collate)
    test_f, test_y = features(model, data.val, args.batch_size, data.collate)
    return {"encoder": encoder or "random init", "val_split": data.val_name, "train_images": len(train),
            "knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, args.k, len(data.classes)),
            "linear_acc": linear_accuracy(train_f, train_y, test_f, test_y),
            "chance": 1 / len(data.classes), "seconds": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a fine-tuning recipe: model, model_args and data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--encoder", help="a `spikingformer pretrain` checkpoint (without it: the random baseline only)")
    p.add_argument("--calibrate", type=int, default=2000, help="training images for the BN statistics (default 2000)")
    p.add_argument("--batch-size", type=int, default=250, help="images per forward pass (default 250)")
    p.add_argument("--k", type=int, default=20, help="neighbours that vote in the kNN probe (default 20)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if min(args.calibrate, args.batch_size, args.k) < 1:
        p.error("--calibrate, --batch-size and --k must be >= 1")
    try:
        cfg = load_config(args.config, args.set)
        rows = [probe(cfg, None, args)] + ([probe(cfg, args.encoder, args)] if args.encoder else [])
    except (CheckpointError, ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{rows[0]['val_split']}; probes trained on {rows[0]['train_images']} images, chance "
          f"{100 * rows[0]['chance']:.1f} %")
    for r in rows:
        print(f"  {r['encoder']}: kNN-{args.k} {100 * r['knn_acc']:.1f} %, linear {100 * r['linear_acc']:.1f} %")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
