"""Token sets, their lifetimes, the grants that renew them and the stores that keep them."""
