"""octavo_models"""
