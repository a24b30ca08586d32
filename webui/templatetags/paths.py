from django import template

from config.paths import paths_for as _paths_for

register = template.Library()


@register.filter
def paths_for(text, user):
    """{{ job.error_text|paths_for:user }}: file paths whole for admins, shortened to their last part for others."""
    return _paths_for(text, user)
