"""lowbit.hw"""
