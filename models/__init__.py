"""scaleprobe.models"""
