from django.contrib.auth import views as auth_views
from django.urls import path

from webui import views, views_diagrams, views_exports

app_name = "webui"

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<int:conversation_id>/", views.chat, name="conversation"),
    path("c/<int:conversation_id>/older/", views.conversation_older, name="conversation_older"),
    path("c/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<int:conversation_id>/settings/", views.conversation_settings, name="conversation_settings"),
    path("c/<int:conversation_id>/show/<int:message_id>/", views.version_show, name="version_show"),
    path("c/<int:conversation_id>/export/", views_exports.conversation_export, name="conversation_export"),
    path("conversations/export/", views_exports.conversations_export, name="conversations_export"),
    path("conversations/import/", views_exports.conversations_import, name="conversations_import"),
    path("c/<int:conversation_id>/share/", views_exports.conversation_share, name="conversation_share"),
    path("s/<str:token>/", views_exports.shared, name="shared"),
    path("s/<str:token>/revoke/", views_exports.share_revoke, name="share_revoke"),
    path("diagram-frame/", views_diagrams.diagram_frame, name="diagram_frame"),
    path("playground/", views.playground, name="playground"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("users/", views.users, name="users"),
    path("login/", auth_views.LoginView.as_view(template_name="webui/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("models/", views.model_library, name="models"),
    path("models/uploads/", views.upload_create, name="upload_create"),
    path("models/uploads/<uuid:upload_id>/", views.upload_detail, name="upload_detail"),
    path("models/uploads/<uuid:upload_id>/finish/", views.upload_finish, name="upload_finish"),
    path("models/pulls/", views.pulls_partial, name="pulls"),
    path("models/pulls/new/", views.pull_create, name="pull_create"),
    path("models/pulls/files/", views.pull_files, name="pull_files"),
    path("models/pulls/<int:pull_id>/cancel/", views.pull_cancel, name="pull_cancel"),
    path("models/<str:name>/delete/", views.model_delete, name="model_delete"),
    path("models/<str:name>/", views.model_detail, name="model_detail"),
    path("models/<str:name>/convert/", views.model_convert, name="model_convert"),
    path("models/<str:name>/check-update/", views.model_check_update, name="model_check_update"),
    path("models/<str:name>/pull-update/", views.model_pull_update, name="model_pull_update"),
]
