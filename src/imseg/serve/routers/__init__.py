"""The API's route groups, one ``APIRouter`` each (included by :func:`imseg.serve.app.create_app`)."""
