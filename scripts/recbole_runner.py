"""Train and evaluate one RecBole model on a split exported by scripts/bench_recbole.py (runs in RecBole's own venv).

    <recbole venv>/bin/python scripts/recbole_runner.py --data-dir <dir> --dataset <name> --model SASRec \
        --epochs 30 --seed 0 --out result.json

This file imports only RecBole and its dependencies (never intentrec): it runs with the separate
benchmark venv's interpreter. The split files hold one row per target, `session_id item_id_list
item_id`, so RecBole trains, validates and tests on exactly the targets intentrec uses
(`benchmark_filename`; no re-splitting, no data augmentation, no filtering). Evaluation ranks the
full catalogue (`mode: full`); sequential models in RecBole do not mask the history, as intentrec's
default (`evaluate.exclude_seen=false`). Writes JSON: best validation metrics, test metrics, per-epoch
training seconds, targets per epoch and the validation curve against cumulative training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole reloads its own checkpoints with torch.load


# SASRec, GRU4Rec and BERT4Rec, and two more recent sequential models RecBole 1.2.1 ships: FEARec
# (frequency-enhanced attention with contrastive terms, SIGIR 2023) and CORE (consistent representation
# encoder, SIGIR 2022). Each reads the same atomic files; RecBole's own defaults for the rest of its keys.
MODELS = ["SASRec", "GRU4Rec", "BERT4Rec", "FEARec", "CORE"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--stopping-step", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="SASRec blocks")
    parser.add_argument(
        "--gru-layers", type=int, default=1, help="GRU4Rec layers (RecBole's default, and intentrec's gru)"
    )
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--exclude-seen",
        action="store_true",
        help="items of the target's history cannot be recommended (intentrec's evaluate.exclude_seen=true)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    params = {
        "data_path": args.data_dir,
        "dataset": args.dataset,
        "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "session_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["session_id", "item_id_list", "item_id", *(["seen_list"] if args.exclude_seen else [])]},
        "alias_of_item_id": ["item_id_list", *(["seen_list"] if args.exclude_seen else [])],
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "user_inter_num_interval": None,
        "item_inter_num_interval": None,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": args.hidden,
        "embedding_size": args.hidden,
        "inner_size": 4 * args.hidden,
        "n_layers": args.layers if args.model != "GRU4Rec" else 1,
        "num_layers": args.gru_layers,
        "n_heads": args.heads,
        "hidden_dropout_prob": args.dropout,
        "attn_dropout_prob": args.dropout,
        "dropout_prob": args.dropout,
        "learning_rate": args.lr,
        "train_batch_size": args.batch_size,
        "eval_batch_size": 1024,
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "device": "cpu",
        "use_gpu": False,
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "checkpoint_dir": os.path.join(os.path.dirname(os.path.abspath(args.out)), "recbole_saved"),
        "log_wandb": False,
        "state": "WARNING",
    }
    config = Config(model=args.model, dataset=args.dataset, config_dict=params)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    if args.exclude_seen:
        # Same protocol as intentrec's evaluate.exclude_seen: every item of the row before the target (the
        # exported seen_list, longer than the model's input window when the row is) scores -inf.
        predict = model.full_sort_predict

        def full_sort_predict_unseen(interaction):
            scores = predict(interaction)
            history = interaction["seen_list"]
            return scores.scatter(1, history, float("-inf")) if history.numel() else scores

        model.full_sort_predict = full_sort_predict_unseen

    epochs: list[dict] = []
    state = {"train_seconds": 0.0}
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a, **k):
        started = time.perf_counter()
        loss = train_epoch(*a, **k)
        seconds = time.perf_counter() - started
        state["train_seconds"] += seconds
        epochs.append({"epoch": len(epochs), "seconds": round(seconds, 3)})
        return loss

    def timed_valid(*a, **k):
        score, result = valid_epoch(*a, **k)
        if epochs:
            epochs[-1].update(train_seconds=round(state["train_seconds"], 3), val_ndcg10=float(score))
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    started = time.perf_counter()
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    wall = time.perf_counter() - started
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    targets = len(train_data._dataset)
    result = {
        "library": "recbole",
        "recbole_version": __import__("recbole").__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "dataset": args.dataset,
        "seed": args.seed,
        "num_items": int(dataset.item_num - 1),
        "train_targets_per_epoch": int(targets),
        "valid_targets": int(len(valid_data._dataset)),
        "test_targets": int(len(test_data._dataset)),
        "epochs": epochs,
        "train_seconds": round(state["train_seconds"], 3),
        "fit_wall_seconds": round(wall, 3),
        "train_targets_per_second": round(targets * len(epochs) / state["train_seconds"], 1)
        if state["train_seconds"]
        else 0.0,
        "best_valid": {k: float(v) for k, v in best_valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        "params": {k: v for k, v in vars(args).items() if k not in ("out",)},
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: result[k] for k in ("model", "dataset", "best_valid", "test", "train_targets_per_second")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
