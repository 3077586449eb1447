"""`python -m avatar_devtools.demo` (`make demo`): the whole system on one machine, no cluster.

One run of what the project is for, end to end, with nothing simulated that a user would see:

- `system`: the emulated Kubernetes API (`localcluster`) with a simulated kubelet that runs each
  worker Pod as a real `avatar-worker run` process (its env, its mounted Secret, its exit as the
  Pod's phase), the real operator (`runner.Operator`, kopf, leader election, status relay) in a
  thread of its own, and a local room server that every session's room is served from.
- `agent`: the voice agent's side: `AvatarSessionClient` creates the session and waits for it to
  join; the project's `FramedAudioSender` streams TTS audio into the room in agent-sized chunks,
  ends the turn with `segment_end`, barges in with `INTERRUPT`, and reads the `stream_ended` acks.
- `speech`: the agent's "TTS": espeak-ng on the fly, or `examples/hello.wav` without it.
- `measure`: what a viewer of the room received, measured — A/V offset, interrupt latency.
- `board`: the live status table (phase, playback, position, node, GPU), redrawn in place on a
  terminal, one line per change otherwise.
- `scenario`: the demo's script (`run`), also what the integration tests run with less audio;
  `cli`: the command line.

The operator package does not depend on the worker or the agent SDK's Kubernetes client: this
package imports them inside the functions that need them, so the operator image runs without.
"""
