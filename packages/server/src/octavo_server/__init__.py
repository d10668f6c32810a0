"""octavo_server"""
