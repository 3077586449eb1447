"""avatar_worker: the Avatar Server — receives an agent's TTS audio and publishes a lip-synced avatar."""
