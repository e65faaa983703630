"""query_api"""
