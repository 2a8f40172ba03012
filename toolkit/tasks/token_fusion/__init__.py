"""Token fusion family: OmniVec2-style image patch + LiDAR pillar tokens fused by cross-attention (task.py)."""
