"""lungs"""
