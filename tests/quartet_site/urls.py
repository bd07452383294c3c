"""
The test site's URLs: QU4RTET's capture API under C{capture/}, as QU4RTET
mounts it.
"""

from django.urls import include, path

urlpatterns = [path("capture/", include("quartet_capture.urls"))]
