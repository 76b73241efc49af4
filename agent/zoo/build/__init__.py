"""Zoo variant builders and the build framework.

``registry`` holds the plug-in points; ``runner`` builds a recipe; every other module registers
builders (``@register_builder``) or a kind plugin (``register_kind``). See docs/ZOO.md.
"""
