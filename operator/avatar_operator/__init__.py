"""The avatar-operator control plane: kopf handlers, placement, manifests and localcluster."""
