"""Train the small multi-granularity CLIP of tests/fixtures/synth-umg on the synthetic
world, UMG-CLIP style: image-level (image vs caption, with hard-negative captions),
region-level (the dense-pooled region vector of each object's box, pooled exactly as
the server does -- pooling.py -- vs its phrase among all phrases) and pixel-level
(every patch token vs the phrase of the object covering it, or "background").

    /usr/bin/python3 -m tools.umgtrain.train --out tests/fixtures/synth-umg    (see docs/synth.md)

Deterministic for a given --seed, --count, --steps and thread count (2)."""

import argparse
import json
import os
import random
import shutil
import sys
import time

import numpy as np

# OpenBLAS (Debian's torch BLAS) would start its own threads besides torch's
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F

from tools.synthworld import world  # noqa: E402
from tools.umgclip.config import with_defaults  # noqa: E402
from tools.umgclip.model import CLIP, load_clip, save_weights  # noqa: E402
from tools.umgclip.tokenizer import Tokenizer  # noqa: E402
from tools.umgtrain import data, pooling  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
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


def hard_negative_caption(objs, rng, drop=0.0):
    """The caption of a slightly different world: one attribute changed, or two
    objects' colours swapped (attribute binding), or (probability drop, photos of
    2+ objects) one object left out: the photo shows more than that caption says."""
    objs = [dict(o) for o in objs]
    if drop > 0 and len(objs) >= 2 and rng.random() < drop:
        del objs[rng.randrange(len(objs))]
        return world.caption(objs)
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


def sincos_2d(d, grid):
    """[grid*grid, d] fixed 2-D sine-cosine position codes (row-major cells): half the
    channels code the row, half the column, each as sin/cos at d/4 frequencies."""
    q = d // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    pos = torch.arange(grid, dtype=torch.float32)
    ang = pos[:, None] * omega[None]  # [grid, q]
    code = torch.cat([ang.sin(), ang.cos()], 1)  # [grid, 2q]
    rows = code[:, None, :].expand(grid, grid, 2 * q)
    cols = code[None, :, :].expand(grid, grid, 2 * q)
    return torch.cat([rows, cols], 2).reshape(grid * grid, 4 * q)


def soft_targets(texts_rows, texts_cols):
    t = torch.tensor([[1.0 if a == b else 0.0 for b in texts_cols] for a in texts_rows])
    return t / t.sum(1, keepdim=True).clamp(min=1.0)


class CompactTokens:
    """The training's view of the 49408-row token embedding: only the rows of the
    tokens this world's texts use are parameters (a few dozen), so neither the
    backward pass nor AdamW touch the other ~49.4k rows every step.  With zero
    weight decay on embeddings, AdamW would leave rows without gradient unchanged
    anyway: the saved checkpoint (full matrix, other rows at their initial values)
    is the same as training the full matrix."""

    def __init__(self, model, tok, texts):
        used = {49406, 49407}
        for t in texts:
            used.update(tok.tokenize(t))
        self.ids = sorted(used)
        self.remap = {t: i for i, t in enumerate(self.ids)}
        emb = model.text_model.embeddings.token_embedding
        self.full = emb.weight.detach().clone()
        model.text_model.embeddings.token_embedding = torch.nn.Embedding.from_pretrained(
            self.full[self.ids].clone(), freeze=False)
        self.tok = tok
        self.memo = {}

    def encode(self, text):
        ids = self.memo.get(text)
        if ids is None:
            ids = [self.remap[t] for t in self.tok.tokenize(text)]  # KeyError: a word outside the world
            self.memo[text] = ids
        return ids

    def state_dict(self, model):
        sd = {k: v for k, v in model.state_dict().items()}
        full = self.full.clone()
        full[self.ids] = sd["text_model.embeddings.token_embedding.weight"].detach()
        sd["text_model.embeddings.token_embedding.weight"] = full
        return sd


def world_words():
    """Every word a caption, phrase or hard-negative caption of this world can use."""
    words = set(world.COLOUR_NAMES) | set(world.SHAPES) | set(world.SIZES) | {data.BACKGROUND}
    words |= set("a and above below to the left right of".split())
    return sorted(words)


def multi_positive_nll(logits, targets, valid=None):
    """Mean over rows of -sum(t * log_softmax(logits)) with t = targets normalized per
    row; columns where valid is False are left out of the softmax."""
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    t = targets / targets.sum(1, keepdim=True)
    lp = logits.log_softmax(1)
    return -(t * torch.where(t > 0, lp, torch.zeros_like(lp))).sum(1).mean()


def clip_grad_norm(params, max_norm):
    """torch.nn.utils.clip_grad_norm_ (L2, the same coefficient) with multi-tensor ops."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)
    return total


class PhaseTimer:
    """--profile: CPU seconds of this process per phase of a step (time.process_time,
    which on a shared machine varies less than wall time), mean over the profiled steps."""

    def __init__(self, on, skip):
        self.on, self.skip, self.sums, self.steps, self.active = on, skip, {}, 0, False

    def start(self, step):
        self.active = bool(self.on) and step >= self.skip
        if self.active:
            self.steps += 1
            self.t = time.process_time()

    def mark(self, name):
        if self.active:
            t = time.process_time()
            self.sums[name] = self.sums.get(name, 0.0) + t - self.t
            self.t = t

    def report(self):
        if not self.steps:
            return
        total = sum(self.sums.values())
        print("profile: mean CPU per step over %d steps: %.3f s" % (self.steps, total / self.steps))
        for name, v in self.sums.items():
            print("  %-26s %7.1f ms  %5.1f%%" % (name, 1000 * v / self.steps, 100 * v / total))


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
                    help="torch threads: 2 on an idle 2-core machine took 0.33 s a step against 0.42 with 1 "
                         "(docs/synth.md); on a shared, oversubscribed machine 1 can be faster")
    ap.add_argument("--bf16", type=int, default=1,
                    help="1: matrix products in bfloat16 (autocast; fp32 master weights), about 3x "
                         "faster on CPUs with AVX512-BF16; 0: all fp32")
    ap.add_argument("--w-image", type=float, default=1.0, help="weight of the image-level losses")
    ap.add_argument("--w-region", type=float, default=2.0, help="weight of the region-level losses")
    ap.add_argument("--w-pixel", type=float, default=1.0, help="weight of the pixel-level loss")
    ap.add_argument("--w-pixel-short", type=float, default=0.0,
                    help="weight of a second pixel-level loss: object cells among the 48 colour+shape phrases")
    ap.add_argument("--w-shape", type=float, default=0.0,
                    help="weight of a shape loss: object boxes and object cells among the 6 shape words")
    ap.add_argument("--pos-init", choices=["random", "sincos"], default="random",
                    help="initial patch position embeddings: random (std 0.02) or 2-D sine-cosine (MAE)")
    ap.add_argument("--pos-scale", type=float, default=0.5, help="amplitude of --pos-init sincos")
    ap.add_argument("--jitter", type=int, default=1,
                    help="1: region losses also on proposal-like boxes (data.proposal_like_boxes)")
    ap.add_argument("--proposals",
                    help="the server's own proposal boxes of the training photos (dump_proposals.py on "
                         "`generate --seed SEED --count COUNT`): the region losses also use them")
    ap.add_argument("--proposals-per-photo", type=int, default=0,
                    help="with --proposals: a random subset of this many of a photo's proposals per "
                         "step (0: all of them)")
    ap.add_argument("--hard-negatives", type=int, default=1,
                    help="hard-negative captions per photo in the image-level loss (hard_negative_caption)")
    ap.add_argument("--drop-negatives", type=float, default=0.0,
                    help="probability that a hard-negative caption of a photo of 2+ objects leaves one out")
    ap.add_argument("--hflip", type=float, default=0.0,
                    help="probability that a photo is seen mirrored in a step (data.hflip_item: the world is "
                         "symmetric under a horizontal mirror; the caption's left/right follow)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--init", help="checkpoint directory to continue training from")
    ap.add_argument("--cache", help="pickle of the rendered photos, reused when it exists")
    ap.add_argument("--procs", type=int, default=2, help="processes rendering the photos")
    ap.add_argument("--profile", type=int, default=0,
                    help="time the phases of every step (CPU seconds of this process) and print their "
                         "means over the steps after the first --profile-skip; 0: off")
    ap.add_argument("--profile-skip", type=int, default=5)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    rng = random.Random(a.seed)
    box_rng = np.random.default_rng([a.seed, 77])
    t0 = time.time()

    tok = Tokenizer(BPE_DIR)
    cfg = make_config(a)
    model = CLIP(with_defaults(cfg))
    if a.init:  # continue from a checkpoint (its F16 weights), with a fresh schedule
        init = load_clip(a.init)
        if init.config["vision_config"] != model.config["vision_config"] or \
                init.config["text_config"] != model.config["text_config"]:
            sys.exit("--init %s: its config differs from the requested one" % a.init)
        model.load_state_dict(init.state_dict())
    grid = a.image_size // a.patch_size
    if a.pos_init == "sincos" and not a.init:
        with torch.no_grad():
            pe = model.vision_model.embeddings.position_embedding.weight
            pe[0].zero_()
            pe[1:] = a.pos_scale * sincos_2d(a.vision_width, grid)
    toks = CompactTokens(model, tok, world_words())

    items = data.prepare_cached(a.cache, a.seed, a.count, a.image_size, a.patch_size, procs=a.procs)
    if a.bf16:
        data.attach_bf16_pixels(items)
    print("prepared %d photos in %.0f s" % (len(items), time.time() - t0), flush=True)
    real_props = data.load_proposals(a.proposals, items) if a.proposals else None
    # the vectorized pooling weights must be pooling.py's (the C server's) definition
    chk = [items[0]["objects"][0]["box"], [0, 0, items[0]["width"], items[0]["height"]], [3.5, 7.25, 40.0, 21.5]]
    ref = np.array(pooling.weight_matrix(chk, items[0]["geom"], a.patch_size, grid))
    assert np.abs(data.weight_matrix_np(chk, items[0]["geom"], a.patch_size, grid) - ref).max() < 1e-6

    full = data.full_phrases()
    short = data.short_phrases()
    shapes = list(world.SHAPES)
    vocab = full + short + [data.BACKGROUND] + (shapes if a.w_shape > 0 else [])
    vocab_ids = [toks.encode(t) for t in vocab]
    full_index = {p: i for i, p in enumerate(full)}
    short_index = {p: i for i, p in enumerate(short)}
    n_full, n_short = len(full), len(short)
    bg_class = n_full  # in the pixel/region class list [full..., background]
    # full phrase index -> its colour+shape phrase / its shape (-100: background, ignored)
    parts = data.full_phrase_parts()
    full_to_short = torch.tensor([short_index["%s %s" % (c, sh)] for _, c, sh in parts] + [-100])
    full_to_shape = torch.tensor([shapes.index(sh) for _, _, sh in parts] + [-100])
    pix_weight = torch.ones(n_full + 1)
    pix_weight[bg_class] = 0.25  # objects are a minority of patches: weight them up

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98),
                            foreach=True)  # one multi-tensor op per group, not ~100 per-parameter steps
    params = [p for p in model.parameters() if p.requires_grad]
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, a.steps - warm)))

    order = []
    log = []
    prof = PhaseTimer(a.profile, a.profile_skip)
    t_steps = time.time()
    for step in range(a.steps):
        prof.start(step)
        if len(order) < a.batch:
            perm = list(range(len(items)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:a.batch], order[a.batch:]
        batch = [items[i] for i in idx]
        if a.hflip > 0:
            flips = box_rng.random(len(batch)) < a.hflip
            batch = [data.hflip_item(b, a.image_size, a.patch_size) if f else b for b, f in zip(batch, flips)]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)

        # region boxes of every photo: its objects' annotated boxes (+ the background
        # box), and with --jitter proposal-like boxes labelled by IoU with the objects
        wmats, reg_obj_full, reg_obj_short, reg_iou_full, reg_iou_short = [], [], [], [], []
        for b in batch:
            ob = np.array([o["box"] for o in b["objects"]], dtype=np.float64)
            boxes = ob
            if a.jitter:
                boxes = data.proposal_like_boxes(box_rng, ob, b["width"], b["height"])
            if real_props is not None:  # the boxes the server will rank for this photo
                rp = real_props[b["name"]]
                if b.get("flipped"):
                    rp = data.hflip_boxes(rp, b["width"])
                if 0 < a.proposals_per_photo < len(rp):
                    rp = rp[np.sort(box_rng.choice(len(rp), a.proposals_per_photo, replace=False))]
                boxes = np.concatenate([boxes, rp])
            wm = data.weight_matrix_np(boxes, b["geom"], a.patch_size, grid)
            if b["has_bg"]:  # the precomputed background box (its weights row is the last one)
                wm = np.concatenate([wm, b["weights"][-1:]])
            wmats.append(torch.from_numpy(wm))
            iou = data.iou_matrix(boxes, ob)  # [R, n_obj]
            if b["has_bg"]:
                iou = np.concatenate([iou, np.zeros((1, len(ob)))])
            # per box: IoU with each full phrase / each colour+shape phrase of the photo
            f = np.zeros((len(iou), n_full))
            sh = np.zeros((len(iou), n_short))
            for k, o in enumerate(b["objects"]):
                f[:, full_index[o["phrase"]]] = np.maximum(f[:, full_index[o["phrase"]]], iou[:, k])
                si = short_index["%s %s" % (o["colour"], o["shape"])]
                sh[:, si] = np.maximum(sh[:, si], iou[:, k])
            reg_iou_full.append(f)
            reg_iou_short.append(sh)
        iou_full = torch.from_numpy(np.concatenate(reg_iou_full)).float()    # [R, 96]
        iou_short = torch.from_numpy(np.concatenate(reg_iou_short)).float()  # [R, 48]
        prof.mark("boxes (numpy)")

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            px = torch.stack([b["px_bf16"] for b in batch]) if a.bf16 else data.to_pixels_fast(batch)
            prof.mark("pixels")
            img_emb, patches = model.encode_image(px)
            prof.mark("vision forward")
            caps = [b["caption"] for b in batch]
            negs = [hard_negative_caption(b["objects"], rng, a.drop_negatives)
                    for _ in range(a.hard_negatives) for b in batch]
            prof.mark("hard-negative captions")
            # two calls: the short phrases are not padded to the captions' length (grouping
            # the captions by length as well measured no faster: 95 vs 99 ms text fwd+bwd)
            cap_emb = model.encode_ids([toks.encode(c) for c in caps + negs])
            voc_emb = model.encode_ids(vocab_ids)
            prof.mark("text forward")
        img_emb, patches, cap_emb, voc_emb = img_emb.float(), patches.float(), cap_emb.float(), voc_emb.float()
        cap_emb = F.normalize(cap_emb, dim=-1)
        voc_emb = F.normalize(voc_emb, dim=-1)
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
        # every object it shows (multi-positive over the full phrases)
        loss_cap = loss_img.detach()
        tgt_o = torch.zeros(len(batch), n_full)
        for i, b in enumerate(batch):
            for o in b["objects"]:
                tgt_o[i, full_index[o["phrase"]]] = 1.0
        loss_img = loss_img + multi_positive_nll(scale * img_n @ voc_emb[:n_full].t(), tgt_o)

        # region level: pooled box vectors (pooling.py weights) vs phrases
        patches_n = F.normalize(patches, dim=-1)
        R = F.normalize(torch.cat([w @ pn for w, pn in zip(wmats, patches_n)]), dim=-1)
        bg_row = n_full + n_short
        cls_full = torch.cat([voc_emb[:n_full], voc_emb[bg_row:bg_row + 1]])  # full phrases + background
        cls_short = voc_emb[n_full:n_full + n_short]
        best_iou, best_full = iou_full.max(1)
        pos = best_iou >= 0.7  # a box of an object: its phrase
        neg = best_iou < 0.3   # a box of no object: background
        lab = torch.where(pos, best_full, torch.full_like(best_full, bg_class))
        keep = pos | neg
        loss_reg = F.cross_entropy(scale * R[keep] @ cls_full.t(), lab[keep])
        bs_iou, best_short = iou_short.max(1)
        spos = bs_iou >= 0.7
        loss_reg = loss_reg + F.cross_entropy(scale * R[spos] @ cls_short.t(), best_short[spos])
        # phrase -> region among every box of the batch (what a region query does): the
        # boxes with IoU >= 0.7 with an object of that phrase are the positives, boxes
        # with IoU in [0.5, 0.7) with one are left out, all others (loose boxes, parts,
        # other objects, background) are negatives, so the tight box must win
        for qiou, qemb in ((iou_full, voc_emb[:n_full]), (iou_short, cls_short)):
            present = (qiou >= 0.7).any(0).nonzero().flatten()
            qi = qiou[:, present].t()  # [Q, R]
            tq = (qi >= 0.7).float() * qi
            valid = (qi >= 0.7) | (qi < 0.5)
            loss_reg = loss_reg + multi_positive_nll(scale * qemb[present] @ R.t(), tq, valid)

        # pixel level: each patch vs [full phrases + background]
        labels = torch.from_numpy(np.concatenate([b["pix_cls"] for b in batch]))
        pix_logits = scale * patches_n.reshape(-1, patches_n.shape[-1]) @ cls_full.t()
        loss_pix = F.cross_entropy(pix_logits, labels, weight=pix_weight, ignore_index=-100)

        loss = a.w_image * loss_img + a.w_region * loss_reg + a.w_pixel * loss_pix
        if a.w_pixel_short > 0 or a.w_shape > 0:
            obj_cells = labels.clamp(min=0)
            cell_short = torch.where((labels >= 0) & (labels < n_full), full_to_short[obj_cells],
                                     torch.full_like(labels, -100))
            pn_flat = patches_n.reshape(-1, patches_n.shape[-1])
        if a.w_pixel_short > 0:
            loss = loss + a.w_pixel_short * F.cross_entropy(scale * pn_flat @ cls_short.t(), cell_short,
                                                            ignore_index=-100)
        if a.w_shape > 0:
            cls_shape = voc_emb[bg_row + 1:]
            cell_shape = torch.where(cell_short >= 0, full_to_shape[obj_cells], torch.full_like(labels, -100))
            box_shape = full_to_shape[best_full[pos]]
            loss = loss + a.w_shape * (F.cross_entropy(scale * pn_flat @ cls_shape.t(), cell_shape, ignore_index=-100)
                                       + F.cross_entropy(scale * R[pos] @ cls_shape.t(), box_shape))
        prof.mark("losses (forward)")
        opt.zero_grad()
        loss.backward()
        prof.mark("backward")
        clip_grad_norm(params, 1.0)
        opt.step()
        prof.mark("clip + AdamW")
        if step % a.log_every == 0 or step == a.steps - 1:
            with torch.no_grad():
                acc = (logits[:, :len(batch)].argmax(1) == torch.arange(len(batch))).float().mean()
            line = ("step %d/%d %.0fs cpu %.0fs (%.2f s/step) loss %.3f img %.3f (caption %.3f) reg %.3f pix %.3f "
                    "scale %.1f batch-acc %.2f regions %d"
                    % (step, a.steps, time.time() - t0, time.process_time(), (time.time() - t_steps) / (step + 1),
                       loss.item(),
                       loss_img.item(), loss_cap.item(), loss_reg.item(), loss_pix.item(), scale.item(),
                       acc.item(), R.shape[0]))
            print(line, flush=True)
            log.append(line)

    prof.report()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_weights(os.path.join(a.out, "model.safetensors"), toks.state_dict(model), dtype="F16")
    for n in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(BPE_DIR, n), os.path.join(a.out, n))
    with open(os.path.join(a.out, "train_log.txt"), "w") as f:
        f.write("command: python3 -m tools.umgtrain.train " + " ".join(sys.argv[1:]) + "\n")
        f.write("\n".join(log) + "\n")
        f.write("total %.0f s wall, %.0f s cpu of this process (the photos are rendered by --procs "
                "worker processes, not counted here)\n" % (time.time() - t0, time.process_time()))
    print("wrote %s in %.0f s" % (a.out, time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
