"""octavo_cuda"""
