"""Reviewers' verdicts (the labels topic) as training data: a labelled set, its difficulty
audit, and retrained heads exported as a new, not yet live, heads version."""
