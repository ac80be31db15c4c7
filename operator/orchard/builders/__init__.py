"""Pure builders: a typed resource (and settings) in, the Kubernetes objects it should own out."""
