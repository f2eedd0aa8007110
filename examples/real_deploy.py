"""Deploy a scikit-learn model to a running ``clipperlab serve`` and query it.

clipperlab serve &            # query port 1337, admin port 1338
python3 examples/real_deploy.py
"""

from sklearn.datasets import load_digits
from sklearn.svm import SVC

from clipperlab.real.client import AdminClient, QueryClient

x, y = load_digits(return_X_y=True)
admin = AdminClient("127.0.0.1:1338")
if "digits" not in admin.get_all_apps():
    admin.add_app("digits", slo_ms=100, default_output=-1)
    admin.deploy_sklearn("svm", SVC(gamma=0.001).fit(x[:1500], y[:1500]), app="digits")
admin.wait_ready("digits")

q = QueryClient("127.0.0.1:1337")
q.predict("digits", x[0])  # the first batch warms the container up
answers = q.predict_batch("digits", list(x[1500:1600]))
right = sum(a["output"] == t for a, t in zip(answers, y[1500:1600], strict=True))
print(f"{right} of 100 held-out digits right; first answer: {answers[0]}")
