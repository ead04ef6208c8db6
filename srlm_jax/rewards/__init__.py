"""Rewards from judgments: preference pairs and the DPO dataset built from sampled ids."""
