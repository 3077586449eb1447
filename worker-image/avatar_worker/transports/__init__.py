"""Rooms the worker joins: VideoSDK (production) and the local room (tests, demo)."""
