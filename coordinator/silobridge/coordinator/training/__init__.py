"""Adapter training at the coordinator: a TrainAdapter run, and fitting, signing, storing one."""
