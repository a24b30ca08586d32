from django.contrib.auth import views as auth_views
from django.urls import path

from webui import views

app_name = "webui"

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<int:conversation_id>/", views.chat, name="conversation"),
    path("login/", auth_views.LoginView.as_view(template_name="webui/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("models/", views.model_library, name="models"),
    path("models/<str:name>/", views.model_detail, name="model_detail"),
    path("models/<str:name>/convert/", views.model_convert, name="model_convert"),
]
