"""octavo_quant"""
