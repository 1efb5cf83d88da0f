"""Human review: the page reviewers clear a tenant's review queue on (``modstream review``),
and the verdicts it produces — to the labels topic for training, and as the final decision
on the action's topic. docs/review.md describes it."""
