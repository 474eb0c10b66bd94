"""Losses over a batch. SFT: cross-entropy on the labelled positions only. DPO: the sigmoid preference
loss on per-sequence log-probabilities of the answer tokens (see `dpo_sigmoid_loss`).

A causal LM's forward computes vocabulary-sized logits for every position, although only the answer
tokens carry loss; with a 50k-150k vocabulary that projection and its softmax are a large share of a
step. Here the decoder's hidden states are taken first, the labelled positions selected, and the
output projection and cross-entropy run on those alone, in chunks (recomputed in the backward pass
when there are several, so their logits are never all held at once). On CUDA, Liger's fused linear
cross-entropy replaces the chunks when `liger-kernel` is installed.

The loss is a *sum* with its token count, so the loop can weight every token of an optimizer step
equally across micro-batches and processes.
"""

from __future__ import annotations

import logging

from training.vision import multimodal_backbone

log = logging.getLogger("train")

IGNORE_INDEX = -100
CHUNK_TOKENS = 4096


def _base_causal_lm(model):
    """The transformers CausalLM inside a PEFT model (or the model itself)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def _logit_transform(config):
    """Whatever the model applies to lm_head's output before the softmax (softcapping, scaling), or None."""
    config = getattr(config, "get_text_config", lambda: config)()
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere multiplies
    divide = getattr(config, "logits_scaling", None)  # Granite divides

    if not (cap or scale or divide):
        return None

    def transform(logits):
        import torch

        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


def _liger_loss():
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except Exception:  # not installed, or no Triton for this GPU: the chunked path is exact too
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)


def _causal_lm_loss_module():
    import torch

    class CausalLMLoss(torch.nn.Module):
        """forward(input_ids, labels, position_ids, attention_mask, image tensors) -> (sum of token losses,
        labelled tokens)."""

        def __init__(self, model, use_liger: bool = False) -> None:
            super().__init__()
            self.model = model
            causal = _base_causal_lm(model)
            # a plain dict: the decoder and head stay submodules of `model` only, never registered twice

            # image-text models: the backbone that merges image features into the text, not the bare decoder
            decoder = multimodal_backbone(causal) or (causal.get_decoder() if hasattr(causal, "get_decoder") else None)
            self._parts = {"decoder": decoder,
                           "head": causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None}
            self._transform = _logit_transform(causal.config)
            fused_ok = isinstance(self._parts["head"], torch.nn.Linear) and self._transform is None
            self._liger = _liger_loss() if use_liger and fused_ok else None
            self.selective = self._parts["decoder"] is not None and isinstance(self._parts["head"], torch.nn.Module)
            if self._liger is not None:
                log.info("Loss: Liger fused linear cross-entropy on the labelled positions.")

        def forward(self, input_ids, labels, position_ids=None, attention_mask=None, **image_inputs):
            targets = labels[:, 1:]
            mask = targets != IGNORE_INDEX
            count = mask.sum()
            if not self.selective:
                logits = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                    use_cache=False, **image_inputs).logits[:, :-1]
                return _cross_entropy_sum(logits[mask], targets[mask]), count
            output = self._parts["decoder"](input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                   use_cache=False, **image_inputs)
            hidden = output[0][:, :-1][mask]
            chosen = targets[mask]
            if self._liger is not None:
                head = self._parts["head"]
                return self._liger(head.weight, hidden, chosen, head.bias), count
            return self._chunked(hidden, chosen), count

        def _chunked(self, hidden, targets):
            import torch.utils.checkpoint as checkpoint

            if hidden.shape[0] <= CHUNK_TOKENS:
                return self._head_loss(hidden, targets)
            total = hidden.new_zeros((), dtype=torch.float32)
            for start in range(0, hidden.shape[0], CHUNK_TOKENS):
                part = slice(start, start + CHUNK_TOKENS)
                total = total + checkpoint.checkpoint(self._head_loss, hidden[part], targets[part], use_reentrant=False)
            return total

        def _head_loss(self, hidden, targets):
            logits = self._parts["head"](hidden)
            if self._transform is not None:
                logits = self._transform(logits)
            return _cross_entropy_sum(logits, targets)

    return CausalLMLoss


def dpo_sigmoid_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """DPO's sigmoid loss per pair, and the implicit rewards (TRL's DPOTrainer, loss_type "sigmoid").

    Inputs are summed log-probabilities of each answer's tokens. Returns (losses, chosen rewards,
    rejected rewards): loss = -log sigmoid(beta * ((pc - rc) - (pr - rr))), reward = beta * (p - r), detached.
    """
    import torch.nn.functional as F

    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def kto_loss(policy, policy_kl, reference, reference_kl, desirable, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO's loss per example, the KL estimate and the implicit rewards (TRL's KTOTrainer, loss_type "kto").

    `policy`/`reference` are the summed log-probabilities of each example's answer, `policy_kl`/`reference_kl`
    those of the mismatched (prompt, another example's answer) sequences, `desirable` a bool per example.
    kl = max(0, mean(policy_kl - reference_kl)), detached; with r = policy - reference, a desirable example's loss
    is w_d (1 - sigmoid(beta (r - kl))), an undesirable one's w_u (1 - sigmoid(beta (kl - r))). TRL's loss is the
    mean of these; its rewards are beta * r, detached.
    """
    import torch

    kl = (policy_kl - reference_kl).mean().detach().clamp(min=0)
    ratio = policy - reference
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return losses, kl, beta * ratio.detach()


def _kto_loss_module():
    class KTOLoss(_preference_loss_module()):
        """forward(input_ids, position_ids, labels, owners, reference, desirable) -> (sum of example losses,
        examples, statistics). Rows hold packed sequences: 2k the answer of example k, 2k+1 its KL sequence (its
        prompt with another example's answer). Without `reference` it returns their log-probabilities (the
        reference pass). Statistics, summed over examples: [kl, reward toward the label (beta r for a desirable
        answer, -beta r for an undesirable one)]."""

        def __init__(self, model, beta: float, desirable_weight: float, undesirable_weight: float) -> None:
            super().__init__(model, beta)
            self.weights = (desirable_weight, undesirable_weight)

        def forward(self, input_ids, position_ids, labels, owners, reference=None, desirable=None):
            import torch

            logps = self.sequence_logps(input_ids, position_ids, labels, owners)
            if reference is None:
                return logps
            # the KL sequences only estimate the reference point: TRL computes their log-probs without gradient
            losses, kl, rewards = kto_loss(logps[:, 0], logps[:, 1].detach(), reference[:, 0], reference[:, 1],
                                           desirable, self.beta, *self.weights)
            count = losses.shape[0]
            stats = torch.stack([kl * count, torch.where(desirable, rewards, -rewards).sum()])
            return losses.sum(), torch.tensor(count, device=losses.device), stats

    return KTOLoss


def kto_loss_module(model, beta: float, desirable_weight: float, undesirable_weight: float):
    """The KTO objective around a PEFT causal LM, as a module so DDP/FSDP wrap the whole computation."""
    return _kto_loss_module()(model, beta, desirable_weight, undesirable_weight)


def _preference_loss_module():
    import torch

    class PreferenceLoss(_causal_lm_loss_module()):
        """forward(input_ids, position_ids, labels, owners, reference) -> (sum of pair losses, pairs, statistics).

        Rows hold packed chosen and rejected sequences; `owners` gives, for each labelled position, the
        sequence it belongs to (2k chosen, 2k+1 rejected of pair k). Without `reference` the forward returns
        the per-pair (chosen, rejected) log-probabilities instead: the reference pass before training.
        Statistics, summed over pairs: [reward accuracy, margin, chosen reward, rejected reward].
        """

        def __init__(self, model, beta: float) -> None:
            super().__init__(model, use_liger=False)  # Liger's kernel returns a loss, not per-token log-probs
            self.beta = beta

        def sequence_logps(self, input_ids, position_ids, labels, owners):
            targets = labels[:, 1:]
            mask = targets != IGNORE_INDEX
            owner = owners[:, 1:][mask]
            sequences = int(owner.max()) + 1 if owner.numel() else 0
            if self.selective:
                output = self._parts["decoder"](input_ids=input_ids, position_ids=position_ids, use_cache=False)
                token_logps = self._chunked_logps(output[0][:, :-1][mask], targets[mask])
            else:
                logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[:, :-1]
                token_logps = _token_logps(logits[mask], targets[mask])
            totals = token_logps.new_zeros(sequences + sequences % 2)
            return totals.index_add(0, owner, token_logps).view(-1, 2)

        def _chunked_logps(self, hidden, targets):
            import torch.utils.checkpoint as checkpoint

            if hidden.shape[0] <= CHUNK_TOKENS:
                return self._head_logps(hidden, targets)
            parts = [checkpoint.checkpoint(self._head_logps, hidden[i:i + CHUNK_TOKENS], targets[i:i + CHUNK_TOKENS],
                                           use_reentrant=False) for i in range(0, hidden.shape[0], CHUNK_TOKENS)]
            return torch.cat(parts)

        def _head_logps(self, hidden, targets):
            logits = self._parts["head"](hidden)
            if self._transform is not None:
                logits = self._transform(logits)
            return _token_logps(logits, targets)

        def forward(self, input_ids, position_ids, labels, owners, reference=None):
            logps = self.sequence_logps(input_ids, position_ids, labels, owners)
            if reference is None:
                return logps
            losses, chosen, rejected = dpo_sigmoid_loss(logps[:, 0], logps[:, 1], reference[:, 0], reference[:, 1],
                                                        self.beta)
            stats = torch.stack([(chosen > rejected).float().sum(), (chosen - rejected).sum(), chosen.sum(),
                                 rejected.sum()])
            return losses.sum(), torch.tensor(losses.shape[0], device=losses.device), stats

    return PreferenceLoss


def _token_logps(logits, targets):
    import torch.nn.functional as F

    return -F.cross_entropy(logits.float(), targets, reduction="none")


def preference_loss_module(model, beta: float):
    """The DPO objective around a PEFT causal LM, as a module so DDP/FSDP wrap the whole computation."""
    return _preference_loss_module()(model, beta)


def _cross_entropy_sum(logits, targets):
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets, reduction="sum")


def sft_loss_module(model, use_liger: bool = False):
    """The SFT objective around a (PEFT) causal LM, as a module so DDP/FSDP wrap the whole computation."""
    return _causal_lm_loss_module()(model, use_liger)
