"""lowbit.sw"""
