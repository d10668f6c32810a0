"""octavo_triton"""
