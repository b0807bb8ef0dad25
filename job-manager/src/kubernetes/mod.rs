//! The Kubernetes executor: translation (job -> objects), job records, leases, pruning.
