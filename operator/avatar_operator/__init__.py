"""The avatar-operator control plane: kopf handlers, the reconciler, manifests, the status relay,
the Lease, `POST /launch` and metrics — what the operator image runs, and nothing else (the
emulated cluster and the demo are `avatar_devtools`; pure placement is `avatar_sdk.placement`)."""
