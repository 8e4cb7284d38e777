#!/usr/bin/python3
"""Train the small multi-granularity CLIP of tests/fixtures/synth-umg on the synthetic
world, UMG-CLIP style: image-level (image vs caption, with hard-negative captions),
region-level (the dense-pooled region vector of each object's box, pooled exactly as
the server does -- pooling.py -- vs its phrase among all phrases) and pixel-level
(every patch token vs the phrase of the object covering it, or "background").

    tools/umgtrain/train.py --out tests/fixtures/synth-umg            (see docs/synth.md)

Deterministic for a given --seed, --count, --steps and thread count (2)."""

import argparse
import json
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
import world  # noqa: E402  (tools/synthworld, put on the path by data)
from model import CLIP, load_checkpoint, save_safetensors  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BPE_DIR = os.path.join(ROOT, "tests", "fixtures", "clip-tiny")


def make_config(a):
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "_name_or_path": "synth-umg",
        "projection_dim": a.proj, "logit_scale_init_value": 2.6592, "torch_dtype": "float16",
        "text_config": {"hidden_size": a.text_width, "intermediate_size": 4 * a.text_width,
                        "num_attention_heads": a.text_width // 32, "num_hidden_layers": a.text_layers,
                        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                        "layer_norm_eps": 1e-05, "bos_token_id": 49406, "eos_token_id": 49407,
                        "pad_token_id": 1, "projection_dim": a.proj},
        "vision_config": {"hidden_size": a.vision_width, "intermediate_size": 4 * a.vision_width,
                          "num_attention_heads": a.vision_width // 32, "num_hidden_layers": a.vision_layers,
                          "image_size": a.image_size, "patch_size": a.patch_size, "num_channels": 3,
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "projection_dim": a.proj},
    }


def hard_negative_caption(objs, rng):
    """The caption of a slightly different world: one attribute changed, or two
    objects' colours swapped (attribute binding)."""
    objs = [dict(o) for o in objs]
    if len(objs) >= 2 and rng.random() < 0.35:
        i, j = rng.sample(range(len(objs)), 2)
        if objs[i]["colour"] != objs[j]["colour"]:
            objs[i]["colour"], objs[j]["colour"] = objs[j]["colour"], objs[i]["colour"]
            return world.caption(objs)
    o = objs[rng.randrange(len(objs))]
    what = rng.choice(["colour", "shape", "size"])
    if what == "colour":
        o["colour"] = rng.choice([c for c in world.COLOUR_NAMES if c != o["colour"]])
    elif what == "shape":
        o["shape"] = rng.choice([s for s in world.SHAPES if s != o["shape"]])
    else:
        o["size"] = "large" if o["size"] == "small" else "small"
    return world.caption(objs)


def soft_targets(texts_rows, texts_cols):
    t = torch.tensor([[1.0 if a == b else 0.0 for b in texts_cols] for a in texts_rows])
    return t / t.sum(1, keepdim=True).clamp(min=1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1, help="world seed of the training photos")
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--vision-width", type=int, default=96)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--proj", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is faster than 2 on a shared, oversubscribed machine")
    ap.add_argument("--init", help="checkpoint directory to continue training from")
    ap.add_argument("--cache", help="pickle of the rendered photos, reused when it exists")
    ap.add_argument("--procs", type=int, default=2, help="processes rendering the photos")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    rng = random.Random(a.seed)
    t0 = time.time()

    tok = Tokenizer(os.path.join(BPE_DIR, "vocab.json"), os.path.join(BPE_DIR, "merges.txt"))
    cfg = make_config(a)
    model = CLIP(cfg)
    if a.init:  # continue from a checkpoint (its F16 weights), with a fresh schedule
        init = load_checkpoint(a.init)
        if init.config["vision_config"] != cfg["vision_config"] or init.config["text_config"] != cfg["text_config"]:
            sys.exit("--init %s: its config differs from the requested one" % a.init)
        model.load_state_dict(init.state_dict())
    grid = a.image_size // a.patch_size

    items = data.prepare_cached(a.cache, a.seed, a.count, a.image_size, a.patch_size, procs=a.procs)
    print("prepared %d photos in %.0f s" % (len(items), time.time() - t0), flush=True)

    full = data.full_phrases()
    short = data.short_phrases()
    vocab = full + short + [data.BACKGROUND]
    vocab_ids = [tok.encode(t) for t in vocab]
    full_index = {p: i for i, p in enumerate(full)}
    short_index = {p: i for i, p in enumerate(short)}
    n_full, n_short = len(full), len(short)
    bg_class = n_full  # in the pixel/region class list [full..., background]

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98))
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, a.steps - warm)))

    order = []
    log = []
    for step in range(a.steps):
        if len(order) < a.batch:
            perm = list(range(len(items)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:a.batch], order[a.batch:]
        batch = [items[i] for i in idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)

        px = data.to_pixels(batch)
        img_emb, patches = model.encode_image(px)
        caps = [b["caption"] for b in batch]
        negs = [hard_negative_caption(b["objects"], rng) for b in batch]
        # two calls: the short phrases are not padded to the captions' length
        cap_emb = F.normalize(model.encode_ids([tok.encode(c) for c in caps + negs]), dim=-1)
        voc_emb = F.normalize(model.encode_ids(vocab_ids), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)

        # image level: image -> (captions + hard negatives), caption -> images
        img_n = F.normalize(img_emb, dim=-1)
        logits = scale * img_n @ cap_emb.t()
        tgt_i = soft_targets(caps, caps + negs)
        loss_img = -(tgt_i * logits.log_softmax(1)).sum(1).mean()
        lt = logits[:, :len(batch)].t()
        tgt_t = soft_targets(caps, caps)
        loss_img = 0.5 * (loss_img - (tgt_t * lt.log_softmax(1)).sum(1).mean())

        # image level, bag of objects: the image embedding against the phrase of
        # every object it shows (multi-positive over the full phrases), so the
        # global vector learns which objects are there before it learns captions
        loss_cap = loss_img.detach()
        tgt_o = torch.zeros(len(batch), n_full)
        for i, b in enumerate(batch):
            for o in b["objects"]:
                tgt_o[i, full_index[o["phrase"]]] = 1.0
        tgt_o = tgt_o / tgt_o.sum(1, keepdim=True)
        loss_img = loss_img + -(tgt_o * (scale * img_n @ voc_emb[:n_full].t()).log_softmax(1)).sum(1).mean()

        # region level: pooled box vectors (pooling.py weights) vs phrases
        patches_n = F.normalize(patches, dim=-1)
        reg_vecs, reg_full, reg_short = [], [], []
        for b, pn in zip(batch, patches_n):
            w = torch.from_numpy(b["weights"])
            r = F.normalize(w @ pn, dim=-1)
            for k, o in enumerate(b["objects"]):
                reg_vecs.append(r[k])
                reg_full.append(full_index[o["phrase"]])
                reg_short.append(short_index["%s %s" % (o["colour"], o["shape"])])
            if b["has_bg"]:
                reg_vecs.append(r[-1])
                reg_full.append(bg_class)
                reg_short.append(-1)
        R = torch.stack(reg_vecs)
        cls_full = torch.cat([voc_emb[:n_full], voc_emb[-1:]])  # full phrases + background
        cls_short = voc_emb[n_full:n_full + n_short]
        rf = torch.tensor(reg_full)
        rs = torch.tensor(reg_short)
        obj = rs >= 0
        loss_reg = F.cross_entropy(scale * R @ cls_full.t(), rf)
        loss_reg = loss_reg + F.cross_entropy(scale * R[obj] @ cls_short.t(), rs[obj])
        # phrase -> region among every region of the batch (what a region query does)
        sim_q = scale * cls_short @ R.t()  # [n_short, n_regions]
        present = sorted(set(rs[obj].tolist()))
        tq = torch.stack([(rs == q).float() for q in present])
        tq = tq / tq.sum(1, keepdim=True)
        loss_reg = loss_reg + -(tq * sim_q[present].log_softmax(1)).sum(1).mean()

        # pixel level: each patch vs [full phrases + background]
        labels = []
        for b in batch:
            lab = np.where(b["label"] >= 0, 0, b["label"]).copy()
            for k, o in enumerate(b["objects"]):
                lab[b["label"] == k] = full_index[o["phrase"]]
            lab[b["label"] == -1] = bg_class
            lab[b["label"] == -2] = -100
            labels.append(lab)
        labels = torch.from_numpy(np.concatenate(labels))
        pix_logits = scale * patches_n.reshape(-1, patches_n.shape[-1]) @ cls_full.t()
        # objects are a minority of patches: weight them up
        weight = torch.ones(n_full + 1)
        weight[bg_class] = 0.25
        loss_pix = F.cross_entropy(pix_logits, labels, weight=weight, ignore_index=-100)

        loss = loss_img + loss_reg + loss_pix
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == a.steps - 1:
            with torch.no_grad():
                acc = (logits[:, :len(batch)].argmax(1) == torch.arange(len(batch))).float().mean()
            line = ("step %d/%d %.0fs loss %.3f img %.3f (caption %.3f) reg %.3f pix %.3f scale %.1f batch-acc %.2f"
                    % (step, a.steps, time.time() - t0, loss.item(), loss_img.item(), loss_cap.item(), loss_reg.item(),
                       loss_pix.item(), scale.item(), acc.item()))
            print(line, flush=True)
            log.append(line)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(a.out, "model.safetensors"), model.state_dict(), dtype="F16")
    for n in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(BPE_DIR, n), os.path.join(a.out, n))
    with open(os.path.join(a.out, "train_log.txt"), "w") as f:
        f.write("command: tools/umgtrain/train.py " + " ".join(sys.argv[1:]) + "\n")
        f.write("\n".join(log) + "\n")
        f.write("total %.0f s\n" % (time.time() - t0))
    print("wrote %s in %.0f s" % (a.out, time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
