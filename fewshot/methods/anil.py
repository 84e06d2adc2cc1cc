"""ANIL (Raghu et al. 2020, "almost no inner loop"): MAML in which only the linear head adapts to each task.

The backbone's features of the support and query images are computed once per task; the inner loop adapts the head
on the support features, and the query loss of the adapted head is backpropagated through the inner loop to the
head's initialisation and through the features to the backbone, which is meta-learned but never adapted. Far
cheaper than MAML (the inner loop never backpropagates through the backbone) and usually about as accurate.
"""

from __future__ import annotations

from fewshot.methods.maml import MAML


class ANIL(MAML):
    """MAML with a head-only inner loop; takes :class:`MAML`'s options."""

    adapt_body = False
